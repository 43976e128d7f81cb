"""2 gloo processes vs 1 process: ITC loss/gradients, ITM negatives from the global batch, gather_with_grad."""

import os
import tempfile

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
