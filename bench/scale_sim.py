"""Training ingest at the paper's scale, simulated on CPU: index memory and plan time per rank, run-log bytes per
checkpoint, and (``s3``) bytes a real multi-worker training epoch reads from S3.

    python bench/scale_sim.py index  [--files 12900] [--rows 10000] [--row-group 1000] [--ranks 64]
    python bench/scale_sim.py runlog [--interval 1000] [--global-batch 1680] [--steps 250000]
    python bench/scale_sim.py s3     [--workers 4] [--samples 2000] [--shards 8] [--row-group 25]

``index`` writes a real manifest.json for files x rows (no data files) and, for every rank, loads it, builds the
index and the rank's epoch plan, timing it and measuring Python allocations with tracemalloc (peak and kept).
``runlog`` builds one checkpoint interval of simulated rows (the global batch's img2dataset-style 9-digit keys
each step) and compares the bytes a checkpoint writes as a Parquet segment with the previous format, which
rewrote the whole metrics.jsonl (the same ``json.dumps`` per row, so its size at step N is N / interval times the
interval's JSON: arithmetic on the measured bytes).
``s3`` writes synthetic data-prep Parquet (row groups of ``--row-group`` rows) and its manifest to a moto S3
server behind a byte-counting HTTP proxy, runs one epoch of tiny stage-1 training on ``--workers`` Ray Train CPU
workers through jobs/stage1.py, and prints the data bytes read over the data set's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_index(a) -> None:
    from pipeline.data import Index, rank_plan, steps_per_epoch, window_items
    from pipeline.manifest import FileEntry, write_manifest

    groups = [a.row_group] * (a.rows // a.row_group) + ([a.rows % a.row_group] if a.rows % a.row_group else [])
    with tempfile.TemporaryDirectory() as d:
        entries = [FileEntry(f"{d}/data/{i:05d}.parquet", a.rows, a.rows * 30_000, groups) for i in range(a.files)]
        uri = write_manifest(d, entries)
        del entries
        print(f"manifest: {a.files} files x {a.rows} rows (row groups of {a.row_group}), "
              f"{os.path.getsize(uri) / 2**20:.2f} MiB on disk; {a.ranks} ranks, batch {a.batch}, "
              f"window {a.window}")

        def one_rank(rank: int):
            index = Index.load(d)
            per_rank = steps_per_epoch(index, a.batch, a.ranks) * a.batch
            plan = rank_plan(index, 0, 3, a.ranks, rank, per_rank, a.window)
            items = window_items(plan, index, per_rank // 2)  # a resume mid-epoch: the worst case
            return index, plan, items

        times, cpu, peaks, kept = [], [], [], []
        for rank in range(a.ranks):
            t0, c0 = time.perf_counter(), time.process_time()
            one_rank(rank)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            tracemalloc.start()
            held = one_rank(rank)
            cur, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            del held
            peaks.append(peak / 2**20)
            kept.append(cur / 2**20)
        index, plan, _ = one_rank(0)
        print(f"per rank: load manifest + index + epoch plan: wall {np.mean(times):.3f}s mean, {max(times):.3f}s max, "
              f"CPU {np.mean(cpu):.3f}s mean, {max(cpu):.3f}s max (goal <= 2 s; {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.1f}); memory peak {max(peaks):.1f} MiB max, kept {max(kept):.1f} MiB max (goal <= 64 MB)")
        print(f"rank 0 plan: {len(plan.pieces)} pieces, {len(plan.window_start) - 1} windows, "
              f"{int(plan.window_start[-1])} samples, files {len(set(plan.pieces[:, 0].tolist()))}")


def _sim_rows(steps: int, first: int, global_batch: int, rng) -> list[dict]:
    """Metric rows as pipeline/train.py writes them, keys as img2dataset names them (shard 5 + index 4 digits)."""
    rows = []
    for s in range(first, first + steps):
        ids = rng.integers(0, 12_900 * 10_000, size=global_batch)
        rows.append({"step": s, "epoch": 0, "itc_loss": float(rng.random()), "itm_loss": float(rng.random()),
                     "itg_loss": float(rng.random()), "loss": float(rng.random()), "lr": 1e-4,
                     "grad_norm": float(rng.random()), "samples_per_s": 1000.0 * rng.random(),
                     "data_wait_frac": float(rng.random()),
                     "keys": [f"{i // 10_000:05d}{i % 10_000:04d}" for i in ids.tolist()]})
    return rows


def bench_runlog(a) -> None:
    from pipeline.run_log import segment_bytes

    rng = np.random.default_rng(0)
    rows = _sim_rows(a.interval, a.steps - a.interval + 1, a.global_batch, rng)
    t0 = time.perf_counter()
    seg = segment_bytes(rows)
    t_seg = time.perf_counter() - t0
    t0 = time.perf_counter()
    old_interval = len("".join(json.dumps(r) + "\n" for r in rows).encode())  # the previous format's logic
    t_old = time.perf_counter() - t0
    print(f"run log, checkpoint every {a.interval} steps, global batch {a.global_batch} (keys per row):")
    print(f"  new: one Parquet segment per checkpoint: {len(seg) / 2**20:.2f} MiB, built in {t_seg:.2f}s, "
          f"the same at every checkpoint; rank 0 holds {a.interval} rows")
    for n in sorted({a.interval, 10 * a.interval, a.steps}):
        print(f"  old: metrics.jsonl rewritten whole at step {n}: {old_interval * n / a.interval / 2**20:,.1f} MiB "
              f"(~{t_old * n / a.interval:,.0f}s of json.dumps; rank 0 holds all {n} rows)")


class _CountingProxy:
    """A reverse proxy in front of the S3 server that counts GET response bytes per key prefix."""

    def __init__(self, upstream: str, prefix: str):
        import http.client
        import http.server
        import threading
        from urllib.parse import urlparse

        self.prefix, self.bytes, self.gets = prefix, 0, 0
        up = urlparse(upstream)
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the S3 clients expect

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if self.command == "GET" and self.path.split("?", 1)[0].startswith(outer.prefix):
                    with lock:
                        outer.bytes += len(data)
                        outer.gets += 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD" else
                                                       resp.getheader("Content-Length") or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _moto() -> tuple:
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def _photo_like(jpg: bytes, rng) -> bytes:
    """Per-pixel noise, JPEG q90: bytes per image like a web photo's, so footers weigh what they weigh at scale."""
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(jpg)), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_s3(a) -> None:
    import io
    import subprocess

    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    from demo.synthetic import SyntheticConfig, make_sample
    from demo.tiny_zoo import build_tiny_zoo
    from pipeline import storage
    from pipeline.manifest import build_manifest, write_manifest
    from pipeline.records import OUTPUT_SCHEMA

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    moto, endpoint = _moto()
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        storage.set_default(storage.StorageConfig(endpoint_url=endpoint, region="us-east-1"))
        syn, rng = SyntheticConfig(image_size=a.image_size), np.random.default_rng(0)
        per = a.samples // a.shards
        for s in range(a.shards):  # data prep's output layout and schema; the training columns filled in
            samples = [make_sample(syn, "train", s * per + i) for i in range(per)]
            rows = [{"key": x["key"], "jpg": _photo_like(x["jpg"], rng), "kept_captions": [x["txt"]],
                     "web_caption": x["txt"]} for x in samples]
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), buf, row_group_size=a.row_group)
            storage.write_bytes(f"s3://bench/ds/data/{s:05d}.parquet", buf.getvalue())
        entries = build_manifest("s3://bench/ds", progress=False)
        write_manifest("s3://bench/ds", entries)
        data_bytes = sum(e.bytes for e in entries)
        proxy = _CountingProxy(endpoint, "/bench/ds/data/")
        steps = a.samples // (a.batch * a.workers)
        with tempfile.TemporaryDirectory() as d:
            zoo = build_tiny_zoo(f"{d}/zoo")
            args = {"model.vision.name_or_path": zoo["vision"], "model.vision.dtype": "fp32",
                    "model.qformer.tokenizer": zoo["bert"], "model.qformer.bert_init": zoo["bert"],
                    "model.qformer.num_query_tokens": 8, "model.qformer.hidden_size": 32,
                    "model.qformer.num_layers": 2, "model.qformer.num_heads": 2,
                    "model.qformer.intermediate_size": 64, "model.qformer.embed_dim": 16,
                    "model.qformer.max_txt_len": 16, "model.qformer.max_position_embeddings": 64,
                    "data.uri": "s3://bench/ds", "data.image_size": 32, "data.shuffle_window": a.window,
                    "train.batch_size": a.batch, "train.num_workers": a.workers, "train.cpus_per_worker": 0.25,
                    "train.max_steps": steps, "train.checkpoint_every": steps, "train.log_every": 10,
                    "train.storage_path": f"{d}/runs", "train.run_name": "s3", "train.ray_address": "local",
                    "optim.warmup_steps": 2, "storage.endpoint_url": proxy.url, "storage.region": "us-east-1"}
            env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
            t0 = time.time()
            r = subprocess.run([sys.executable, "jobs/stage1.py", *[f"{k}={v}" for k, v in args.items()]], cwd=ROOT,
                               env=env, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
            wall = time.time() - t0
        proxy.server.shutdown()
        print(f"S3 (moto behind a counting proxy): {a.samples} samples in {a.shards} shards "
              f"({data_bytes / 2**20:.2f} MiB, {a.image_size}-px photo-like JPEGs, row groups of {a.row_group}), {a.workers} CPU workers x batch "
              f"{a.batch}, one epoch = {steps} steps in {wall:.0f}s")
        print(f"  data bytes read {proxy.bytes / 2**20:.2f} MiB in {proxy.gets} GETs = "
              f"{proxy.bytes / data_bytes:.3f}x the data set (goal <= 1.1; before this change 5.26x)")
    finally:
        moto.terminate()
        moto.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    i = sub.add_parser("index")
    i.add_argument("--files", type=int, default=12_900)
    i.add_argument("--rows", type=int, default=10_000)
    i.add_argument("--row-group", type=int, default=1_000)
    i.add_argument("--ranks", type=int, default=64)
    i.add_argument("--batch", type=int, default=26, help="per-rank samples per step (26 x 64 ~ 1,680)")
    i.add_argument("--window", type=int, default=4096)
    r = sub.add_parser("runlog")
    r.add_argument("--interval", type=int, default=1000)
    r.add_argument("--global-batch", type=int, default=1680)
    r.add_argument("--steps", type=int, default=250_000)
    s = sub.add_parser("s3")
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--samples", type=int, default=2000)
    s.add_argument("--shards", type=int, default=8)
    s.add_argument("--row-group", type=int, default=25)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--window", type=int, default=128)
    s.add_argument("--image-size", type=int, default=256)
    a = p.parse_args()
    {"index": bench_index, "runlog": bench_runlog, "s3": bench_s3}[a.what](a)


if __name__ == "__main__":
    main()
