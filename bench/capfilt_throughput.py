"""CapFilt throughput: the Ray Data pipeline vs the same captioner and filter called in a plain loop.

    python bench/capfilt_throughput.py [--num-samples 800] [--image-size 512] [--num-captions 10]
                                       [--captioner-actors 1] [--actor-cpus 0.5] [--prepare-threads 1]

Both sides read the same WebDataset shards of photo-like JPEGs, decode, validate and resize them, caption
each image K times (tiny exported stage 2, nucleus sampling), rank web + synthetic captions with a tiny
stage-1 ITC filter, keep the top 2 and write Parquet. The plain loop does it shard by shard in this process;
the pipeline runs jobs/dataprep.py's code on a local Ray (read/validate/write tasks, one captioner and one
filter actor by default). Prints images/s of each, their ratio, how many cores the whole machine kept busy
(Ray's daemons included) and CPU time per image, and the load average (the box may be shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from bench.photo_like import photo_like_shards  # noqa: E402
from dataprep.capfilt import Captioner, CaptionFilter  # noqa: E402
from dataprep.config import DataprepConfig  # noqa: E402
from dataprep.run import run  # noqa: E402
from dataprep.sink import write_shard  # noqa: E402
from dataprep.sources import list_shards, read_shard, shard_name  # noqa: E402
from dataprep.validate import validate  # noqa: E402
from pipeline.config import merge  # noqa: E402


def tiny_models(d: str) -> tuple[str, str]:
    from demo.tiny_zoo import build_tiny_zoo, tiny_stage1, tiny_stage2
    from pipeline.models.export import export_stage1, export_stage2
    from pipeline.models.stage1 import Blip2Stage1
    from pipeline.models.stage2 import Blip2Stage2

    torch.manual_seed(0)
    zoo = build_tiny_zoo(f"{d}/zoo")
    export_stage1(Blip2Stage1(tiny_stage1(zoo)).eval(), f"{d}/filter")
    export_stage2(Blip2Stage2(tiny_stage2(zoo)).eval(), f"{d}/captioner")
    return f"{d}/captioner", f"{d}/filter"


def cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all processes: Ray's daemons and workers included)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, open("/proc/stat").readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def plain_loop(cfg: DataprepConfig) -> int:
    """The same work, one shard after the other, each model called on batches of its batch_size."""
    cap, fil = Captioner(dict(cfg.capfilt.captioner)), CaptionFilter(dict(cfg.capfilt.filter))
    n = 0
    for s in list_shards(cfg.input, cfg.source):
        df = pd.DataFrame([validate(r, cfg.validate) for r in read_shard(s, cfg.source)])
        for model, bs in ((cap, cfg.capfilt.captioner.batch_size), (fil, cfg.capfilt.filter.batch_size)):
            df = pd.concat([model(df.iloc[i:i + bs]) for i in range(0, len(df), bs)])
        write_shard(cfg.output, s, shard_name(s), df.to_dict("records"))
        n += len(df)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=800)
    p.add_argument("--per-shard", type=int, default=50)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--num-captions", type=int, default=10)
    p.add_argument("--max-length", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--captioner-actors", type=int, default=1)
    p.add_argument("--actor-cpus", type=float, default=0.5, help="logical CPUs per actor (tasks take 1)")
    p.add_argument("--prepare-threads", type=int, default=1, help="decode/preprocess threads per model actor")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        photo_like_shards(f"{d}/raw", a.num_samples, a.image_size, per_shard=a.per_shard)
        cap, fil = tiny_models(d)
        # by default 2 actors x 0.5 CPU leave 1 CPU for the read/validate/write tasks
        pool = {"batch_size": a.batch_size, "num_cpus": a.actor_cpus, "prepare_threads": a.prepare_threads}
        base = {"input": f"{d}/raw", "validate": {"min_size": 32, "resize_shorter_side": 256},
                "capfilt": {"enabled": True,
                            "captioner": {"model": cap, "num_captions": a.num_captions, "max_length": a.max_length,
                                          "min_actors": a.captioner_actors, "max_actors": a.captioner_actors, **pool},
                            "filter": {"model": fil, "mode": "topk", "top_k": 2, **pool}}}
        load0 = os.getloadavg()
        t0, c0 = time.time(), cpu_seconds()
        n = plain_loop(merge(DataprepConfig, {**base, "output": f"{d}/plain"}))
        wall = time.time() - t0
        plain, plain_cores = n / wall, (cpu_seconds() - c0) / wall
        print(f"cpus={os.cpu_count()} samples={n} source={a.image_size}px K={a.num_captions} "
              f"max_length={a.max_length} batch={a.batch_size} torch_threads={torch.get_num_threads()}")
        print(f"plain loop (same captioner + filter): {plain:.1f} images/s, machine busy {plain_cores:.2f} cores "
              f"({plain_cores / plain * 1000:.1f} core-ms per image; load average before {load0[0]:.1f})", flush=True)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        # start the worker processes and load the models' code once, as a long job would have
        run(merge(DataprepConfig, {**base, "output": f"{d}/warmup", "input": f"{d}/raw/00000.tar"}))
        t0, c0 = time.time(), cpu_seconds()
        s = run(merge(DataprepConfig, {**base, "output": f"{d}/ray"}))
        wall = time.time() - t0
        piped, piped_cores = s["read"] / wall, (cpu_seconds() - c0) / wall
        ray.shutdown()
        load1 = os.getloadavg()
    print(f"load average (1 min) after {load1[0]:.1f}")
    print(f"ray data pipeline, whole run (actor start included): {piped:.1f} images/s  ratio {piped / plain:.2f}x, "
          f"machine busy {piped_cores:.2f} cores ({piped_cores / piped * 1000:.1f} core-ms per image)  "
          f"(driver received {s['driver_received_bytes']} bytes, peak RSS {s['driver_peak_rss_mb']} MB)")


if __name__ == "__main__":
    main()
