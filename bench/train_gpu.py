"""Stage-1 training throughput, MFU and peak memory on one device (GPU: the ViT-g preset in bf16; CPU: tiny).

    python bench/train_gpu.py [--preset vitg|tiny] [--batch 32] [--steps 20]

FLOPs per sample (README): 2 * P_vit * N_img for the frozen ViT forward, plus 6 * P_qformer * T for the
trainable Q-Former forward+backward over its token passes, T = Q (queries) + L (text) + 3 * (Q + L) (ITM)
+ (Q + L) (ITG). Attention-score FLOPs and cross-attention over the N_img image tokens are left out, so MFU is
a lower bound. MFU = FLOPs/sample * samples/s / peak (989 TFLOP/s dense bf16 for H100 SXM, 989 for H200).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

PEAK_TFLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["vitg", "tiny"], default="vitg" if torch.cuda.is_available() else "tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    from transformers import Blip2VisionConfig, Blip2VisionModel

    from pipeline.losses import stage1_losses
    from pipeline.models.presets import tiny_stage1
    from pipeline.models.qformer import QFormerConfig
    from pipeline.models.stage1 import Blip2Stage1, Stage1ModelConfig
    from pipeline.models.tiny import build_tiny_zoo, save_tiny_bert, train_bert_tokenizer
    from pipeline.models.vision import VisionConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as d:
        zoo = build_tiny_zoo(f"{d}/zoo")
        if a.preset == "tiny":
            cfg = tiny_stage1(zoo)
            size = 32
        else:  # random-init ViT-g (39 blocks) and a BERT-base-sized Q-Former: the paper's shapes, no download
            Blip2VisionModel(Blip2VisionConfig()).save_pretrained(f"{d}/vitg")
            tok = train_bert_tokenizer(f"{d}/bert", vocab_size=30522)
            save_tiny_bert(f"{d}/bert", tok, hidden=768, layers=12, heads=12, ffn=3072)
            cfg = Stage1ModelConfig(vision=VisionConfig(name_or_path=f"{d}/vitg", dtype="bf16"),
                                    qformer=QFormerConfig(tokenizer=f"{d}/bert", bert_init=f"{d}/bert"))
            size = 224
        model = Blip2Stage1(cfg).to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.98))
    pix = torch.randn(a.batch, 3, size, size, device=dev)
    toks = model.tokenize(["a photo of a red circle on the left"] * a.batch, device=dev)
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _i in range(a.steps):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        with amp:
            loss = stage1_losses(model(pix, **toks))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
    step = sorted(times[a.steps // 4:])[len(times[a.steps // 4:]) // 2]
    sps = a.batch / step
    p_vit = sum(p.numel() for p in model.vision.tower.parameters())
    p_q = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    n_img = (size // model.vision.tower.config.patch_size) ** 2 + 1
    q, length = cfg.qformer.num_query_tokens, cfg.qformer.max_txt_len
    flops = 2 * p_vit * n_img + 6 * p_q * (q + length + 3 * (q + length) + (q + length))
    print(f"device={torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'} preset={a.preset} batch={a.batch}")
    print(f"samples/s {sps:.1f}  step {step * 1000:.1f} ms  FLOPs/sample {flops / 1e9:.1f} GFLOP")
    if dev == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        mfu = f"{100 * flops * sps / peak:.1f}%" if peak else "n/a (unknown peak)"
        print(f"MFU {mfu}  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    else:
        print("MFU n/a on CPU (no peak figure); peak memory not tracked on CPU")


if __name__ == "__main__":
    main()
