"""2 gloo processes vs 1 process: ITC loss/gradients, ITM negatives from the global batch, gather_with_grad."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pipeline import distributed as D
from pipeline.losses import itc_loss

B, DIM, Q, E = 4, 12, 3, 8


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    img_in, txt_in = torch.randn(2 * B, Q, DIM, generator=g), torch.randn(2 * B, DIM, generator=g)
    img_proj, txt_proj = torch.nn.Linear(DIM, E), torch.nn.Linear(DIM, E)
    with torch.no_grad():
        for lin in (img_proj, txt_proj):
            lin.weight.copy_(torch.randn(E, DIM, generator=g))
            lin.bias.copy_(torch.randn(E, generator=g))
    temp = torch.nn.Parameter(torch.tensor(0.07))
    return img_in, txt_in, img_proj, txt_proj, temp


def _itc(img_in, txt_in, img_proj, txt_proj, temp):
    loss = itc_loss(F.normalize(img_proj(img_in), dim=-1), F.normalize(txt_proj(txt_in), dim=-1), temp)
    loss.backward()
    grads = [p.grad.clone() for p in (*img_proj.parameters(), *txt_proj.parameters(), temp)]
    return loss.detach(), grads


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        img_in, txt_in, img_proj, txt_proj, temp = _toy()
        sl = slice(rank * B, (rank + 1) * B)
        loss, grads = _itc(img_in[sl], txt_in[sl], img_proj, txt_proj, temp)
        for g in grads:  # DDP semantics: gradients averaged over ranks
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss)
        loss /= world

        # gather_with_grad: each rank's slice gets the summed gradient of every rank's use of it
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        y = D.gather_with_grad(x)
        (y * torch.arange(1, 2 * world + 1).float()[:, None] * (rank + 1)).sum().backward()
        x_grad = x.grad.clone()

        # ITM hard negatives through the real model come from the whole global batch
        from demo.tiny_zoo import tiny_stage1
        from pipeline.models.stage1 import Blip2Stage1

        torch.manual_seed(0)
        zoo = torch.load(out_file + ".zoo", weights_only=True)
        model = Blip2Stage1(tiny_stage1(zoo)).eval()
        pix, caps = torch.load(out_file + ".batch", weights_only=True), zoo["captions"]
        t = model.tokenize(caps[rank * B:(rank + 1) * B])
        neg_img, neg_txt, ok = [], [], True
        for s in range(20):
            out = model(pix[rank * B:(rank + 1) * B], **t, generator=torch.Generator().manual_seed(100 * rank + s))
            neg_img.append(out["neg_image_idx"])
            neg_txt.append(out["neg_text_idx"])
            own = torch.arange(rank * B, (rank + 1) * B)
            ok &= bool((out["neg_image_idx"] != own).all() and (out["neg_text_idx"] != own).all())
        if rank == 0:
            torch.save({"loss": loss, "grads": grads, "x_grad": x_grad, "neg_img": torch.cat(neg_img),
                        "neg_txt": torch.cat(neg_txt), "ok": ok}, out_file)
        else:
            torch.save({"x_grad": x_grad, "neg_img": torch.cat(neg_img), "neg_txt": torch.cat(neg_txt), "ok": ok},
                       out_file + ".1")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tiny_zoo, synthetic_batch):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r0.pt")
        torch.save({**tiny_zoo, "captions": synthetic_batch[1][:2 * B]}, out + ".zoo")
        torch.save(synthetic_batch[0][:2 * B], out + ".batch")
        mp.start_processes(_worker, args=(2, os.path.join(d, "init"), out), nprocs=2, start_method="spawn")
        r0 = torch.load(out, weights_only=True)
        r1 = torch.load(out + ".1", weights_only=True)

    loss1, grads1 = _itc(*_toy())  # one process, batch 2B
    torch.testing.assert_close(r0["loss"], loss1, atol=1e-6, rtol=1e-6)
    for a, b in zip(r0["grads"], grads1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)

    # y = cat(x0, x1); rank r weights row i by (i+1)*(r+1). Rows 0-1 belong to rank 0, rows 2-3 to rank 1.
    torch.testing.assert_close(r0["x_grad"], torch.tensor([[1.0] * 3, [2.0] * 3]) * 3)
    torch.testing.assert_close(r1["x_grad"], torch.tensor([[3.0] * 3, [4.0] * 3]) * 3)

    for r in (r0, r1):
        assert r["ok"]  # never the positive
        for idx in (r["neg_img"], r["neg_txt"]):
            assert idx.min() >= 0 and idx.max() < 2 * B
            assert (idx < B).any() and (idx >= B).any()  # drawn from both ranks' samples


# --- ITM hard negatives fetched from their owners vs LAVIS's gather of the whole world --------------------------


def _full_gather_model():
    """The reference: Blip2Stage1 whose ITM negatives come from LAVIS's all_gather_with_grad of every rank's rows."""
    from pipeline.models.stage1 import Blip2Stage1, gather_negatives

    class FullGather(Blip2Stage1):
        def hard_negatives(self, image_embeds, input_ids, attention_mask, neg_img, neg_txt):
            return gather_negatives(image_embeds, input_ids, attention_mask, neg_img, neg_txt)

    return FullGather


def _exchange_checks(rank, world):
    """fetch_rows against gather_with_grad(x)[want]: values, dtype on the wire, gradients at the owners."""
    out = {}
    g = torch.Generator().manual_seed(7)
    n = 3
    x_all = torch.randn(world * n, 2, 5, generator=g)
    wants = torch.randint(0, world * n, (world, 4), generator=g)  # duplicates and own rows included
    weights = torch.randn(world, 4, 2, 5, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        x = x_all[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        got = D.fetch_rows(x, D.plan_rows(wants[rank], n), dtype=dtype)
        (got.float() * weights[rank]).sum().backward()
        x_ref = x.detach().clone().requires_grad_(True)
        ref = D.gather_with_grad(x_ref)[wants[rank]].to(dtype)
        (ref.float() * weights[rank]).sum().backward()
        out[str(dtype)] = {"got": got.detach(), "ref": ref.detach(), "grad": x.grad, "grad_ref": x_ref.grad}
    ids = torch.arange(world * n)[:, None] * 10 + torch.arange(4)  # integers travel without autograd
    out["ids"] = D.fetch_rows(ids[rank * n:(rank + 1) * n], D.plan_rows(wants[rank], n))
    out["ids_ref"] = ids[wants[rank]]
    return out


def _itm_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from demo.tiny_zoo import tiny_stage1
        from pipeline.losses import stage1_losses
        from pipeline.models.stage1 import Blip2Stage1

        res = {"exchange": _exchange_checks(rank, world)}
        zoo = torch.load(out_file + ".zoo", weights_only=True)
        pix, caps = torch.load(out_file + ".batch", weights_only=True), zoo["captions"]
        sl = slice(rank * B, (rank + 1) * B)
        for name, cls in (("full", _full_gather_model()), ("fetched", Blip2Stage1)):
            torch.manual_seed(0)  # same weights on every rank and in both models
            model = cls(tiny_stage1(zoo)).train()  # dropout on: both runs draw the same masks (seeded below)
            torch.manual_seed(100 + rank)
            out = model(pix[sl], **model.tokenize(caps[sl]), generator=torch.Generator().manual_seed(rank))
            losses = stage1_losses(out)
            losses["loss"].backward()
            res[name] = {"losses": {k: v.detach() for k, v in losses.items()}, "neg_img": out["neg_image_idx"],
                         "neg_txt": out["neg_text_idx"],
                         "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                         "trainable": [k for k, p in model.named_parameters() if p.requires_grad]}
        # The rows travel in the Q-Former's dtype: bf16 for a bf16 model (as under DeepSpeed bf16).
        assert type(model) is Blip2Stage1
        model.to(torch.bfloat16)
        t = model.tokenize(caps[sl])
        emb = torch.randn(B, 5, model.vision.width, requires_grad=True)
        images, ids, mask = model.hard_negatives(emb, t["input_ids"], t["attention_mask"],
                                                 res["fetched"]["neg_img"], res["fetched"]["neg_txt"])
        res["bf16_dtypes"] = [images.dtype, ids.dtype, mask.dtype]
        torch.save(res, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_itm_negatives_fetched_match_full_gather(world, tiny_zoo, synthetic_batch):
    """Fetching only the sampled negatives gives the full-gather losses and every gradient, on every rank, to 1e-6."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "itm")
        torch.save({**tiny_zoo, "captions": synthetic_batch[1][:world * B]}, out + ".zoo")
        torch.save(synthetic_batch[0][:world * B], out + ".batch")
        mp.start_processes(_itm_worker, args=(world, os.path.join(d, "init"), out), nprocs=world,
                           start_method="spawn")
        results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]

    remote = 0
    for rank, r in enumerate(results):
        ex = r["exchange"]
        for dtype in ("torch.float32", "torch.bfloat16"):
            e = ex[dtype]
            assert str(e["got"].dtype) == dtype
            torch.testing.assert_close(e["got"], e["ref"], atol=0, rtol=0)
            torch.testing.assert_close(e["grad"], e["grad_ref"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ex["ids"], ex["ids_ref"])

        got, ref = r["fetched"], r["full"]
        torch.testing.assert_close(got["neg_img"], ref["neg_img"], atol=0, rtol=0)  # same sampling
        torch.testing.assert_close(got["neg_txt"], ref["neg_txt"], atol=0, rtol=0)
        assert got["losses"].keys() == ref["losses"].keys()
        for k in got["losses"]:
            torch.testing.assert_close(got["losses"][k], ref["losses"][k], atol=1e-6, rtol=1e-6)
        # Every trainable parameter has a gradient, and each equals the full-gather one (ln_vision included:
        # the gradient of a negative image reaches the rank that owns it).
        assert sorted(got["grads"]) == sorted(ref["grads"]) == sorted(got["trainable"])
        assert "vision.ln_vision.weight" in got["grads"]
        for k in got["grads"]:
            torch.testing.assert_close(got["grads"][k], ref["grads"][k], atol=1e-6, rtol=1e-6,
                                       msg=lambda m, k=k: f"{k}: {m}")
        own = torch.arange(rank * B, (rank + 1) * B)
        remote += int(((got["neg_img"] // B) != rank).sum() + ((got["neg_txt"] // B) != rank).sum())
        assert (got["neg_img"] != own).all() and (got["neg_txt"] != own).all()
        assert r["bf16_dtypes"] == [torch.bfloat16, torch.int64, torch.int64]
    assert remote > 0  # rows did cross ranks
