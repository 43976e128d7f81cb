"""Data-prep throughput: the Ray Data pipeline vs a plain single-process loop doing the same work.

    python bench/dataprep_throughput.py [--num-samples 4000] [--image-size 512]

Both read the same WebDataset shards of photo-like JPEGs (textured noise over the synthetic scenes, so
decoding costs what a web photo costs), decode, validate, resize (shorter side 256) and write Parquet.
Prints images/s of each and their ratio (with models: bench/capfilt_throughput.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from bench.photo_like import photo_like_shards  # noqa: E402
from dataprep.config import DataprepConfig  # noqa: E402
from dataprep.run import run  # noqa: E402
from dataprep.sink import write_shard  # noqa: E402
from dataprep.sources import list_shards, read_shard, shard_name  # noqa: E402
from dataprep.validate import validate  # noqa: E402
from pipeline.config import merge  # noqa: E402


def plain_loop(cfg) -> int:
    n = 0
    for s in list_shards(cfg.input, cfg.source):
        rows = [validate(r, cfg.validate) for r in read_shard(s, cfg.source)]
        write_shard(cfg.output, s, shard_name(s), rows)
        n += len(rows)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=4000)
    p.add_argument("--image-size", type=int, default=768)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        photo_like_shards(f"{d}/raw", a.num_samples, a.image_size)
        base = {"input": f"{d}/raw", "validate": {"min_size": 32, "resize_shorter_side": 256}}
        t0 = time.time()
        n = plain_loop(merge(DataprepConfig, {**base, "output": f"{d}/plain"}))
        plain = n / (time.time() - t0)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        run(merge(DataprepConfig, {**base, "output": f"{d}/warmup", "input": f"{d}/raw/00000.tar"}))  # start workers
        t0 = time.time()
        s = run(merge(DataprepConfig, {**base, "output": f"{d}/ray"}))
        piped = s["read"] / (time.time() - t0)
        print(f"cpus={os.cpu_count()} samples={n} source={a.image_size}px")
        print(f"plain single-process loop: {plain:.1f} images/s")
        print(f"ray data pipeline (no models): {piped:.1f} images/s  ratio {piped / plain:.2f}x")
        ray.shutdown()


if __name__ == "__main__":
    main()
