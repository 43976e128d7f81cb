"""Training-loop overhead: the tiny stage-1 model under Ray Train + DeepSpeed (1 worker) vs a plain PyTorch loop
over the same model, batches and optimizer, measured side by side in one run.

    python bench/train_overhead.py [--steps 60] [--batch 8]

Both step times are medians over the steps after a warm-up; the Ray Train figure includes its data ingest
(Ray Data decode), ``ray.train.report`` every step and DeepSpeed's engine step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    from dataprep.synthetic import SyntheticConfig, generate
    from pipeline.config import merge
    from pipeline.data import decode_batch, epoch_order, index, rank_slice
    from pipeline.losses import stage1_losses
    from pipeline.models.stage1 import Blip2Stage1
    from pipeline.models.tiny import build_tiny_zoo
    from pipeline.optim import lr_lambda, param_groups
    from pipeline.train_config import Stage1JobConfig

    with tempfile.TemporaryDirectory() as d:
        zoo = build_tiny_zoo(f"{d}/zoo")
        generate(SyntheticConfig(num_samples=2000, samples_per_shard=500, image_size=32), f"{d}/raw")
        subprocess.run([sys.executable, "jobs/dataprep.py", f"input={d}/raw", f"output={d}/prep",
                        "validate.min_size=16", "validate.resize_shorter_side=32"], cwd=ROOT, check=True,
                       capture_output=True)
        over = {"model": {"vision": {"name_or_path": zoo["vision"], "dtype": "fp32"},
                          "qformer": {"tokenizer": zoo["bert"], "bert_init": zoo["bert"], "num_query_tokens": 8,
                                      "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                                      "embed_dim": 16, "max_txt_len": 16, "max_position_embeddings": 64}},
                "data": {"uri": f"{d}/prep", "image_size": 32},
                "train": {"batch_size": a.batch, "num_workers": 1, "zero_stage": 2, "max_steps": a.steps,
                          "checkpoint_every": 10**9, "storage_path": f"{d}/runs", "run_name": "bench",
                          "log_every": 10**9}, "optim": {"warmup_steps": 10, "lr": 1e-3}}
        cfg = merge(Stage1JobConfig, over)

        # plain loop: same model, optimizer, schedule and batches (decoded up front, no Ray)
        torch.manual_seed(cfg.train.seed)
        files = index(cfg.data.uri)
        order = rank_slice(epoch_order(files, cfg.train.seed, 0), a.batch, 1, 0)[: a.steps * a.batch]
        batches = []
        for s in range(a.steps):
            chunk = order[s * a.batch:(s + 1) * a.batch]
            b = decode_batch({"file": [f for f, _ in chunk], "row": [r for _, r in chunk], "epoch": [0] * a.batch},
                             [f for f, _ in files], cfg.data, cfg.train.seed)
            batches.append((torch.from_numpy(b["pixel_values"]), list(b["caption"])))
        model = Blip2Stage1(cfg.model).train()
        opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, 10, a.steps, 1e-3, 1e-5))
        times = []
        for pix, caps in batches:
            t0 = time.time()
            loss = stage1_losses(model(pix, **model.tokenize(caps)))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            times.append(time.time() - t0)
        warm = max(5, a.steps // 5)
        plain = 1 / statistics.median(times[warm:])

        # Ray Train + DeepSpeed, 1 worker
        from pipeline.train import fit

        fit(cfg, stage=1)
        rows = [json.loads(x) for x in open(f"{d}/runs/bench/metrics.jsonl").read().splitlines() if x]
        ray_sps = statistics.median(r["samples_per_s"] for r in rows[warm:]) / a.batch
        wait = statistics.median(r["data_wait_frac"] for r in rows[warm:])
        print(f"cpus={os.cpu_count()} steps={a.steps} batch={a.batch} (medians after {warm} warm-up steps)")
        print(f"plain PyTorch loop: {plain:.2f} steps/s")
        print(f"Ray Train + DeepSpeed ZeRO-2 (1 worker): {ray_sps:.2f} steps/s, data-wait fraction {wait:.2f}")
        print(f"ratio: {ray_sps / plain:.2f}x")


if __name__ == "__main__":
    main()
