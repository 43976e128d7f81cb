"""Stage-1 training throughput, MFU and peak memory on one device (GPU: the paper's ViT-g / ViT-L presets in bf16;
CPU: tiny).

    python bench/train_gpu.py                                  # GPU: eva_vit_g at batch 64 and 128, clip_vit_l at 128
    python bench/train_gpu.py --runs eva_vit_g:128 --compile   # also a run with torch.compile on the frozen tower
    python bench/train_gpu.py --runs tiny:8                    # CPU

One step is the stage-1 train step: frozen ViT forward (bf16 weights, no_grad), Q-Former forward for ITC, ITM
(3B pairs, hard negatives) and ITG, the three losses, backward, fused AdamW. The Q-Former keeps fp32 weights and
runs under bf16 autocast. Models are random-init at the paper's shapes (ViT-g 39 blocks, BERT-base Q-Former with
a 30523-token vocabulary, 32 queries, 32 text tokens): speed does not depend on the weights.

FLOPs per sample = the FLOPs of one training step counted by ``torch.utils.flop_counter.FlopCounterMode`` (every
matmul and attention: the frozen ViT forward, and the Q-Former forward and backward), divided by the batch.
MFU = FLOPs per sample x samples/s / peak, peak = 989 TFLOP/s dense bf16 (H100/H200 SXM datasheet). The ViT part is
cross-checked against 2 * P_vit * N + 4 * layers * N^2 * width (N = 257 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
BERT_BASE_VOCAB = 30522


def bert_base_sized_tokenizer(out: str):
    """A BERT WordPiece tokenizer with bert-base-uncased's vocabulary size (the real vocab is not reachable offline)."""
    from transformers import BertTokenizerFast

    from demo.tiny_zoo import corpus

    words = sorted({w for line in corpus() for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab += [f"[unused{i}]" for i in range(BERT_BASE_VOCAB - len(vocab))]
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/vocab.txt", "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=f"{out}/vocab.txt").save_pretrained(out)
    return out


def build(preset: str, workdir: str, dev: str):
    from demo.tiny_zoo import build_tiny_zoo, tiny_stage1
    from pipeline.models.presets import VISION
    from pipeline.models.qformer import QFormerConfig
    from pipeline.models.stage1 import Blip2Stage1, Stage1ModelConfig
    from pipeline.models.vision import FrozenVisionEncoder, VisionConfig

    if preset == "tiny":
        model = Blip2Stage1(tiny_stage1(build_tiny_zoo(f"{workdir}/zoo")))
        return model.to(dev)
    vcfg = VisionConfig(name_or_path=preset, dtype="bf16")
    with torch.device(dev):  # random init straight on the device: a 1B-parameter tower inits in seconds there
        vision = FrozenVisionEncoder(VISION[preset](), vcfg)
        cfg = Stage1ModelConfig(vision=vcfg, qformer=QFormerConfig(tokenizer=bert_base_sized_tokenizer(
            f"{workdir}/bert"), bert_init=None))
        model = Blip2Stage1(cfg, vision=vision)
    return model.to(dev)


def vit_flops(model, n_tokens: int) -> float:
    cfg = model.vision.tower.config
    p = sum(p.numel() for p in model.vision.tower.parameters())
    return 2 * p * n_tokens + 4 * cfg.num_hidden_layers * n_tokens ** 2 * cfg.hidden_size


def run(preset: str, batch: int, steps: int, compile_tower: bool, workdir: str, dtype: str = "bf16",
        profile: bool = False) -> dict:
    from pipeline.losses import stage1_losses

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build(preset, workdir, dev).train()
    bf16 = dtype == "bf16" and dev == "cuda"
    if bf16:  # what DeepSpeed's bf16 mode does: every weight in bf16, no autocast
        model.to(torch.bfloat16)
    if compile_tower:
        model.vision.tower = torch.compile(model.vision.tower)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05, fused=dev == "cuda")
    size = model.vision.image_size
    pix = torch.randn(batch, 3, size, size, device=dev, dtype=torch.bfloat16 if bf16 else torch.float32)
    toks = model.tokenize(["a photo of a small red circle on the left of a large blue square"] * batch, device=dev)
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda" and dtype == "autocast")

    def step():
        with amp:
            loss = stage1_losses(model(pix, **toks))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    warm = 3
    for _ in range(warm):
        step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops() / batch
    with FlopCounterMode(display=False) as fv, torch.no_grad():
        model.vision.tower(pixel_values=pix[:1].to(model.vision.dtype))
    # The ITG pass recomputes the query rows (cross-attention included); LAVIS reuses the query pass's K/V instead.
    with amp, torch.no_grad():
        feats = model.vision(pix)
    with FlopCounterMode(display=False) as fq, amp:
        model.qformer.encode_queries(feats)
    query_pass = fq.get_total_flops() / batch
    if profile and dev == "cuda":
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                step()
                sync()
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=20,
                                            max_name_column_width=70))
        except Exception as e:  # the profile is a diagnosis; the timing below must still run
            print(f"profile failed: {e!r}")
    sync()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    n_img = (size // model.vision.tower.config.patch_size) ** 2 + 1
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "preset": preset, "batch": batch,
           "compile_tower": compile_tower, "steps": steps, "step_ms": 1000 * med, "samples_per_s": batch / med,
           "dtype": "bf16" if bf16 else ("autocast" if dev == "cuda" else "fp32"), "gflop_per_sample": flops / 1e9,
           "gflop_itg_query_recompute": 3 * query_pass / 1e9, "vit_gflop_counted": fv.get_total_flops() / 1e9,
           "vit_gflop_formula": vit_flops(model, n_img) / 1e9, "loss": loss.item(),
           "trainable_params": sum(p.numel() for p in trainable),
           "vit_params": sum(p.numel() for p in model.vision.tower.parameters())}
    if dev == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        out["mfu"] = flops * out["samples_per_s"] / peak if peak else None
        out["mfu_reference_flops"] = (flops - 3 * query_pass) * out["samples_per_s"] / peak if peak else None
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["eva_vit_g:64", "eva_vit_g:128", "clip_vit_l:128"] if gpu
                   else ["tiny:8"], help="preset:batch, preset in eva_vit_g | clip_vit_l | tiny")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="also time the first run with torch.compile on the tower")
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=["bf16", "autocast"],
                   help="bf16: all weights bf16 (as DeepSpeed bf16 runs it); autocast: fp32 Q-Former under autocast")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one step of the first run")
    p.add_argument("--json", help="append one JSON line per run to this file")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    plan = [(r.split(":")[0], int(r.split(":")[1]), False, dt) for dt in a.dtype for r in a.runs]
    if a.compile:
        plan.append((*plan[0][:2], True, plan[0][3]))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i, (preset, batch, comp, dt) in enumerate(plan):
            t0 = time.time()
            r = run(preset, batch, a.steps, comp, d, dt, a.profile and i == 0)
            r["wall_s"] = time.time() - t0
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the run's model is gone; give its memory back before the next one
            rows.append(r)
            print(json.dumps(r), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"\n{'preset':12} {'batch':>5} {'dtype':>8} {'compile':>7} {'samples/s':>10} {'step ms':>8} {'GFLOP/sample':>12} "
          f"{'MFU':>6} {'MFU ref':>7} {'peak GiB':>8}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        mfu_ref = f"{100 * r['mfu_reference_flops']:.1f}%" if r.get("mfu") else "n/a"
        mem = f"{r['peak_mem_gib']:.1f}" if "peak_mem_gib" in r else "n/a"
        print(f"{r['preset']:12} {r['batch']:>5} {r['dtype']:>8} {str(r['compile_tower']):>7} "
              f"{r['samples_per_s']:>10.1f} {r['step_ms']:>8.1f} {r['gflop_per_sample']:>12.1f} {mfu:>6} {mfu_ref:>7} "
              f"{mem:>8}")
    print(f"device: {rows[0]['device']}; MFU against {PEAK_FLOPS.get('H100') / 1e12:.0f} TFLOP/s dense bf16"
          if gpu else "device: cpu (MFU needs a GPU peak figure)")


if __name__ == "__main__":
    main()
