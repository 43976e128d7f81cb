"""The data-prep pipeline on Ray Data: shards -> read + validate -> [captioner] -> [filter] -> write.

A Ray Data row is a whole input shard (dataprep/shard_rows.py). Reading, validating and writing run as Ray
tasks, the captioner and the filter as autoscaling actor pools (min/max actors, GPUs per actor and batch size
from the config), so model stages scale on GPU nodes while decoding scales on CPU nodes. The writer task writes
a shard's Parquet files and its marker in the cluster; the driver receives one small statistics row per shard.
"""

from __future__ import annotations

import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import ray
from omegaconf import OmegaConf

from dataprep.capfilt import ShardStage
from dataprep.config import DataprepConfig, PoolConfig
from dataprep.shard_rows import pack, unpack
from dataprep.sink import finished_shards, summarize, write_output_manifest, write_shard
from dataprep.sources import count_samples, list_shards, read_shard, shard_name
from dataprep.validate import validate
from pipeline import storage
from pipeline.config import save_config


def _read_validate(batch: pa.Table, cfg: DataprepConfig) -> pa.Table:
    storage.set_default(cfg.storage)  # this worker's S3 endpoint (credentials come from its environment)
    return pa.concat_tables([pack(s, [validate(r, cfg.validate) for r in read_shard(s, cfg.source)])
                             for s in batch.column("shard").to_pylist()])


def _write(batch: pa.Table, cfg: DataprepConfig, names: dict[str, str]) -> dict:
    storage.set_default(cfg.storage)
    return {"stats": [json.dumps(write_shard(cfg.output, shard, names[shard], records, cfg.sink.row_group_size))
                      for shard, records in unpack(batch)]}


def _pool(ds: ray.data.Dataset, stage: str, c: PoolConfig) -> ray.data.Dataset:
    if not 1 <= c.min_actors <= c.max_actors:
        raise ValueError(f"capfilt.{stage}: need 1 <= min_actors ({c.min_actors}) <= max_actors ({c.max_actors})")
    return ds.map_batches(ShardStage, fn_constructor_kwargs={"stage": stage, "cfg": OmegaConf.to_container(c)},
                          batch_size=1, batch_format="pyarrow", num_gpus=c.num_gpus, num_cpus=c.num_cpus,
                          compute=ray.data.ActorPoolStrategy(
                              min_size=c.min_actors, max_size=c.max_actors,
                              max_tasks_in_flight_per_actor=c.max_tasks_in_flight_per_actor))


def build_dataset(cfg: DataprepConfig, shards: list[str], names: dict[str, str]) -> ray.data.Dataset:
    """One row per shard in, one statistics row per shard out; the records never leave the cluster."""
    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(_read_validate, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow")
    cf = cfg.capfilt
    if cf.enabled and cf.captioner.enabled:
        ds = _pool(ds, "captioner", cf.captioner)
    if cf.enabled and cf.filter.enabled:
        ds = _pool(ds, "filter", cf.filter)
    # Without models the writer fuses with the reader into one task per shard (Ray Data operator fusion).
    return ds.map_batches(_write, fn_kwargs={"cfg": cfg, "names": names}, batch_size=1, batch_format="pyarrow")


def _progress(cfg, t0: float, last: float, records: int, shards_done: int, shards: int) -> float:
    now = time.time()
    if now - last < cfg.progress_interval_s:
        return last
    print(f"dataprep: {records} records ({records / (now - t0):.1f}/s), {shards_done}/{shards} shards written",
          flush=True)
    return now


def run(cfg: DataprepConfig) -> dict:
    storage.set_default(cfg.storage)
    t0 = time.time()
    shards = list_shards(cfg.input, cfg.source)
    names = {s: shard_name(s) for s in shards}
    if len(set(names.values())) != len(names):
        raise ValueError(f"input {cfg.input!r}: two shards share a file name; output names must be unique")
    save_config(cfg, storage.join(cfg.output, "config.yaml"))
    done = finished_shards(cfg.output)
    todo = [s for s in shards if s not in done]
    with ThreadPoolExecutor(32) as pool:  # img2dataset's _stats.json: a small read per shard, no shard opened
        counts = [n for n in pool.map(count_samples, todo) if n is not None]
    about = f" ({sum(counts)} samples by img2dataset's _stats.json of {len(counts)})" if counts else ""
    print(f"dataprep: {len(shards)} shards, {len(done)} already done, {len(todo)} to do{about}", flush=True)
    n = shards_run = received = 0
    if todo:
        # Without models there is one operator, and Ray Data's per-operator resource reservation only idles CPUs
        # (on 2 cores it ran one task at a time: 157 vs 205 images/s). Set before the dataset copies the context.
        ctx = ray.data.DataContext.get_current()
        reservation = ctx.op_resource_reservation_enabled
        ctx.op_resource_reservation_enabled = reservation and cfg.capfilt.enabled
        try:
            last = time.time()
            for row in build_dataset(cfg, todo, names).iter_rows():  # one small JSON per shard: all the driver gets
                received += len(row["stats"])
                n += json.loads(row["stats"])["read"]
                shards_run += 1
                last = _progress(cfg, t0, last, n, shards_run, len(todo))
        finally:
            ctx.op_resource_reservation_enabled = reservation
    finished = list(finished_shards(cfg.output).values())
    summary = summarize(finished)
    write_output_manifest(cfg.output, finished)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    summary["shards_this_run"] = shards_run
    summary["records_per_second"] = round(n / max(summary["wall_seconds"], 1e-9), 1)
    summary["driver_received_bytes"] = received
    summary["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if summary["read"] != summary["kept"] + summary["filtered"] + summary["rejected"]:
        raise RuntimeError(f"dataprep: accounting broken in {cfg.output}/_progress: {summary}")
    storage.write_text(storage.join(cfg.output, "_summary.json"), json.dumps(summary, indent=2))
    print("dataprep summary: " + json.dumps(summary), flush=True)
    return summary
