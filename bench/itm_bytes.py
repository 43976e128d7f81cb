"""Bytes each rank receives per stage-1 step for the ITM hard negatives: LAVIS's gather of the world (before)
vs fetching only the sampled rows from their owners (after, :func:`pipeline.models.stage1.fetch_negatives`).

    python bench/itm_bytes.py [--worlds 16 64] [--global-batch 1680] [--tokens 257] [--width 1408] [--text-len 32]
                              [--wire bf16] [--measure]

Counted: payload bytes a rank receives from other ranks (what it sends is the mirror image). Before, forward:
all_gather with gradient of the fp32 ``ln_vision`` output [B, tokens, width] plus the int64 text ids and masks;
backward: an all-reduce of the gathered [W*B, tokens, width] fp32 gradient, counted as a ring all-reduce
(2(W-1)/W of the tensor). After, forward: an all-gather of the B+B int64 row requests, the image rows in the
Q-Former's dtype (``--wire``; bf16 under DeepSpeed bf16) and the int64 ids+mask of the negative texts; backward:
the gradients of this rank's rows that others used, in the same dtype. The after figures take every negative as
remote (at most B image rows and B texts per rank; on average (W-1)/W of them are) and the backward's mean over
ranks (the rows served equal, summed over ranks, the rows fetched). Not counted: the ITC feature gathers, unchanged.

``--measure`` runs the real functions on 4 gloo ranks at small shapes, counts every collective, and checks the
counts against the same arithmetic for the rows actually sampled.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

ID_BYTES = torch.tensor([], dtype=torch.int64).element_size()  # tokenizer ids and masks are int64
EMBED_BYTES = torch.tensor([], dtype=torch.float32).element_size()  # ln_vision computes and returns fp32
WIRE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def before(world: int, batch: int, tokens: int, width: int, text_len: int) -> dict[str, int]:
    row = tokens * width * EMBED_BYTES
    return {"forward": (world - 1) * batch * (row + 2 * text_len * ID_BYTES),
            "backward": 2 * (world - 1) * batch * row}  # ring all-reduce of [W*B, tokens, width]


def after(world: int, batch: int, tokens: int, width: int, text_len: int, wire_bytes: int,
          remote_img: int, remote_txt: int, served_img: int) -> dict[str, int]:
    row = tokens * width * wire_bytes
    requests = 2 * (world - 1) * batch * ID_BYTES  # all_gather of the neg_img and neg_txt requests
    return {"forward": requests + remote_img * row + remote_txt * 2 * text_len * ID_BYTES,
            "backward": served_img * row}


def _gb(n: float) -> str:
    return f"{n / 1e9:8.3f} GB" if n >= 1e7 else f"{n / 1e6:8.3f} MB"


def report(args) -> None:
    wire_bytes = torch.tensor([], dtype=WIRE[args.wire]).element_size()
    print(f"ITM negatives, bytes received per rank per step: global batch {args.global_batch}, image embeds "
          f"[{args.tokens}, {args.width}], text length {args.text_len}, wire dtype {args.wire}")
    for w in args.worlds:
        b = args.global_batch // w  # equal batch per rank (the ITC targets assume it); 1680 / 64 -> 26 (1664)
        old = before(w, b, args.tokens, args.width, args.text_len)
        new = after(w, b, args.tokens, args.width, args.text_len, wire_bytes, b, b, b)
        tot_old, tot_new = sum(old.values()), sum(new.values())
        print(f"  W={w:3d} (B={b:3d}/rank, global {b * w})  before: fwd {_gb(old['forward'])} + bwd {_gb(old['backward'])}"
              f" = {_gb(tot_old)}   after: fwd {_gb(new['forward'])} + bwd {_gb(new['backward'])}"
              f" = {_gb(tot_new)}   ({tot_old / tot_new:.0f}x less)")


def _measure_worker(rank: int, world: int, init_file: str, out_file: str, wire: str) -> None:
    import torch.distributed as dist

    from pipeline.losses import sample_hard_negatives
    from pipeline.models.stage1 import fetch_negatives, gather_negatives

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    counts = {"phase": "forward", "forward": 0, "backward": 0}
    originals = {n: getattr(dist, n) for n in ("all_gather", "all_to_all_single", "all_reduce")}

    def all_gather(out, x, *a, **k):
        counts[counts["phase"]] += (world - 1) * x.nbytes
        return originals["all_gather"](out, x, *a, **k)

    def all_to_all_single(out, x, out_splits, in_splits, *a, **k):
        row = out.element_size() * out[0].numel() if len(out) else 0
        counts[counts["phase"]] += (sum(out_splits) - out_splits[rank]) * row
        return originals["all_to_all_single"](out, x, out_splits, in_splits, *a, **k)

    def all_reduce(x, *a, **k):
        counts[counts["phase"]] += 2 * (world - 1) * x.nbytes // world  # ring all-reduce
        return originals["all_reduce"](x, *a, **k)

    try:
        for n, f in (("all_gather", all_gather), ("all_to_all_single", all_to_all_single),
                     ("all_reduce", all_reduce)):
            setattr(dist, n, f)
        b, tokens, width, text_len = 3, 5, 7, 6
        g = torch.Generator().manual_seed(rank)
        sims = torch.randn(2, b, b * world, generator=g)
        neg_img, neg_txt = sample_hard_negatives(sims[0], sims[1], g)
        emb = torch.randn(b, tokens, width, generator=g, requires_grad=True)
        ids = torch.randint(0, 100, (b, text_len), generator=g)
        mask = torch.ones_like(ids)
        result = {}
        for name in ("before", "after"):
            counts.update(phase="forward", forward=0, backward=0)
            if name == "before":
                images, _, _ = gather_negatives(emb, ids, mask, neg_img, neg_txt)
            else:
                images, _, _ = fetch_negatives(emb, ids, mask, neg_img, neg_txt, WIRE[wire])
            counts["phase"] = "backward"
            images.float().sum().backward()
            result[name] = {"forward": counts["forward"], "backward": counts["backward"]}
        for n, f in originals.items():
            setattr(dist, n, f)
        negs = [torch.empty_like(neg_img) for _ in range(world)]
        dist.all_gather(negs, neg_img)
        served = sum(int((n // b == rank).sum()) for r, n in enumerate(negs) if r != rank)
        wire_bytes = torch.tensor([], dtype=WIRE[wire]).element_size()
        result["arithmetic"] = {
            "before": before(world, b, tokens, width, text_len),
            "after": after(world, b, tokens, width, text_len, wire_bytes, int((neg_img // b != rank).sum()),
                           int((neg_txt // b != rank).sum()), served)}
        torch.save(result, f"{out_file}.{rank}")
    finally:
        for n, f in originals.items():
            setattr(dist, n, f)
        dist.destroy_process_group()


def measure(wire: str, world: int = 4) -> None:
    import torch.multiprocessing as mp

    print(f"Measured on {world} gloo ranks (B=3, image embeds [5, 7], text length 6, wire {wire}), bytes received:")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "bytes")
        mp.start_processes(_measure_worker, args=(world, os.path.join(d, "init"), out, wire), nprocs=world,
                           start_method="spawn")
        results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    for rank, r in enumerate(results):
        for name in ("before", "after"):
            m, a = r[name], r["arithmetic"][name]
            ok = "matches" if m == a else "DIFFERS from"
            print(f"  rank {rank} {name:6s}: fwd {m['forward']:6d} B, bwd {m['backward']:6d} B ({ok} the arithmetic:"
                  f" fwd {a['forward']}, bwd {a['backward']})")
            if m != a:
                raise SystemExit("measured bytes differ from the arithmetic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--global-batch", type=int, default=1680)
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--width", type=int, default=1408)
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--wire", choices=sorted(WIRE), default="bf16")
    ap.add_argument("--measure", action="store_true")
    args = ap.parse_args()
    report(args)
    if args.measure:
        measure(args.wire)


if __name__ == "__main__":
    main()
