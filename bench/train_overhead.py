"""Training-loop overhead: the tiny stage-1 model under Ray Train + DeepSpeed (1 worker) vs a plain PyTorch loop
over the same model, batches and optimizer, measured side by side in one run.

    python bench/train_overhead.py [--steps 200] [--batch 8] [--report-every 50] [--zero-stage 2] [--device cuda]

Step times are means over the steps after a warm-up, wall clock from one step to the next. The Ray Train
figure includes its data ingest (Ray Data decode on the other core), ``ray.train.report`` (every
``--report-every`` steps) and DeepSpeed's engine step. Two plain loops: one whose batches were decoded up front
(compute only), and one that decodes the same batches in a torch DataLoader worker process, as a plain PyTorch
job does. Every loop computes with one torch thread (the Ray Train worker has 1 CPU, so Ray gives it
OMP_NUM_THREADS=1). With ``--device cuda`` the model runs on the GPU in bf16 (the plain loops cast every weight to
bf16, as DeepSpeed's bf16 mode does), and the Ray Train worker gets the GPU.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--report-every", type=int, default=50)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--decode-batch", type=int, default=32, help="images per Ray Data decode task (data.decode_batch_size)")
    a = p.parse_args()
    from demo.synthetic import SyntheticConfig, generate
    from demo.tiny_zoo import build_tiny_zoo
    from pipeline.config import merge
    from pipeline.data import Index, decode_samples, rank_plan, read_window, window_items, window_order
    from pipeline.train_config import Stage1JobConfig

    with tempfile.TemporaryDirectory() as d:
        zoo = build_tiny_zoo(f"{d}/zoo")
        generate(SyntheticConfig(num_samples=max(2000, a.steps * a.batch), samples_per_shard=500, image_size=32), f"{d}/raw")
        subprocess.run([sys.executable, "jobs/dataprep.py", f"input={d}/raw", f"output={d}/prep",
                        "validate.min_size=16", "validate.resize_shorter_side=32"], cwd=ROOT, check=True,
                       capture_output=True)
        over = {"model": {"vision": {"name_or_path": zoo["vision"], "dtype": "fp32"},
                          "qformer": {"tokenizer": zoo["bert"], "bert_init": zoo["bert"], "num_query_tokens": 8,
                                      "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                                      "embed_dim": 16, "max_txt_len": 16, "max_position_embeddings": 64}},
                "data": {"uri": f"{d}/prep", "image_size": 32, "decode_batch_size": a.decode_batch},
                "train": {"batch_size": a.batch, "num_workers": 1, "gpus_per_worker": int(a.device == "cuda"), "report_every": a.report_every, "zero_stage": a.zero_stage,
                          "max_steps": a.steps, "checkpoint_every": 10**9, "storage_path": f"{d}/runs", "run_name": "bench",
                          "log_every": 10**9}, "optim": {"warmup_steps": 10, "lr": 1e-3}}
        cfg = merge(Stage1JobConfig, over)

        # plain loops: same model, optimizer, schedule and batches, no Ray, no DeepSpeed
        index = Index.load(cfg.data.uri)
        plan = rank_plan(index, cfg.train.seed, 0, 1, 0, a.steps * a.batch, cfg.data.shuffle_window)
        rows = {c: [] for c in ("key", "jpg", "kept_captions")}  # the epoch's rows in training order, compressed
        for it in window_items(plan, index):
            got = read_window(it)
            for c in rows:
                rows[c] += [got[c][i] for i in window_order(it)]

        def decode(s):
            sl = slice(s * a.batch, (s + 1) * a.batch)
            b = decode_samples(rows["key"][sl], rows["jpg"][sl], rows["kept_captions"][sl], 0, cfg.data,
                               cfg.train.seed)
            return torch.from_numpy(b["pixel_values"]), list(b["caption"])

        class Batches(torch.utils.data.Dataset):
            def __len__(self):
                return a.steps

            def __getitem__(self, s):
                return decode(s)

        torch.set_num_threads(1)
        warm = max(5, a.steps // 5)
        predecoded = plain_loop(cfg, [decode(s) for s in range(a.steps)], a.steps, warm, a.device)
        loader = torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=1, prefetch_factor=4)
        with_loader = plain_loop(cfg, loader, a.steps, warm, a.device)

        # Ray Train + DeepSpeed, 1 worker
        from pipeline.run_log import load_rows
        from pipeline.train import fit

        fit(cfg, "stage1")
        rows = load_rows(f"{d}/runs/bench", a.steps, keys=False)
        ray_sps = 1 / statistics.mean(a.batch / r["samples_per_s"] for r in rows[warm:])
        wait = statistics.mean(r["data_wait_frac"] for r in rows[warm:])
        print(f"device={a.device} cpus={os.cpu_count()} steps={a.steps} batch={a.batch} report_every={a.report_every} "
              f"(means after {warm} warm-up steps)")
        print(f"plain loop, batches decoded up front: {predecoded:.2f} steps/s")
        print(f"plain loop, torch DataLoader decoding (1 worker process): {with_loader:.2f} steps/s")
        print(f"Ray Train + DeepSpeed ZeRO-{a.zero_stage} (1 worker): {ray_sps:.2f} steps/s, data-wait fraction {wait:.2f}")
        print(f"ratio vs plain loop with DataLoader: {ray_sps / with_loader:.2f}x; "
              f"vs batches decoded up front: {ray_sps / predecoded:.2f}x")


def plain_loop(cfg, batches, steps: int, warm: int, device: str = "cpu") -> float:
    """Steps/s of a plain PyTorch loop (wall clock between steps, data wait included)."""
    from pipeline.losses import stage1_losses
    from pipeline.models.stage1 import Blip2Stage1
    from pipeline.optim import lr_lambda, param_groups

    torch.manual_seed(cfg.train.seed)
    model = Blip2Stage1(cfg.model).to(device).train()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model.to(dtype)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, 10, steps, 1e-3, 1e-5))
    times, t_prev = [], time.time()
    for pix, caps in batches:
        loss = stage1_losses(model(pix.to(device, dtype), **model.tokenize(caps, device=device)))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        float(loss)  # the Ray loop reads every loss each step too (a device sync on GPU)
        now = time.time()
        times.append(now - t_prev)
        t_prev = now
    return 1 / statistics.mean(times[warm:])


if __name__ == "__main__":
    main()
