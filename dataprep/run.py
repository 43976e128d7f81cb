"""The data-prep pipeline on Ray Data: shards -> decode/validate -> [captioner] -> [filter] -> Parquet.

CPU decoding runs as Ray tasks; the captioner and the filter run as actor pools (size, GPUs per actor and
batch size from the config), so model stages scale on GPU nodes while decoding scales on CPU nodes.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import ray
from omegaconf import OmegaConf

from dataprep.capfilt import Captioner, CaptionFilter
from dataprep.config import DataprepConfig
from dataprep.sink import ShardSink, finished_shards, summarize, write_output_manifest
from dataprep.sources import count_samples, list_shards, read_shard, shard_name
from dataprep.validate import validate
from pipeline import storage
from pipeline.config import save_config


def _read(row: dict, source_cfg, storage_cfg) -> list[dict]:
    storage.set_default(storage_cfg)  # this worker's S3 endpoint (credentials come from its environment)
    recs = read_shard(row["shard"], source_cfg)
    for r in recs:  # the sink knows a shard is complete once it has seen this many of its records
        r["shard_records"] = len(recs)
    return recs


def _validate_batch(df: pd.DataFrame, cfg) -> pd.DataFrame:
    return pd.DataFrame([{**validate(r, cfg), "shard_records": r["shard_records"]} for r in df.to_dict("records")])


def _process_shard(row: dict, cfg: DataprepConfig, names: dict[str, str]) -> dict:
    """No-model path: one Ray task reads, validates and writes a whole shard; only its stats reach the driver."""
    storage.set_default(cfg.storage)
    shard = row["shard"]
    recs = read_shard(shard, cfg.source)
    sink = ShardSink(cfg.output, {shard: len(recs)}, names, cfg.sink.row_group_size)
    for r in recs:
        sink.add(_finish_row(validate(r, cfg.validate)))
    if not recs:  # an empty shard still gets its marker
        sink.rows[shard] = []
        sink.flush(shard)
    return {"stats": json.dumps(sink.done[0])}


def build_dataset(cfg: DataprepConfig, shards: list[str]) -> ray.data.Dataset:
    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.flat_map(_read, fn_kwargs={"source_cfg": cfg.source, "storage_cfg": cfg.storage})
    ds = ds.map_batches(_validate_batch, fn_kwargs={"cfg": cfg.validate}, batch_format="pandas",
                        batch_size=cfg.validate.batch_size)
    cf = cfg.capfilt
    if cf.enabled and cf.captioner.enabled:
        c = cf.captioner
        ds = ds.map_batches(Captioner, fn_constructor_kwargs={"cfg": OmegaConf.to_container(c)}, batch_format="pandas",
                            batch_size=c.batch_size, compute=ray.data.ActorPoolStrategy(size=c.num_actors),
                            num_gpus=c.num_gpus, num_cpus=c.num_cpus)
    if cf.enabled and cf.filter.enabled:
        f = cf.filter
        ds = ds.map_batches(CaptionFilter, fn_constructor_kwargs={"cfg": OmegaConf.to_container(f)}, batch_format="pandas",
                            batch_size=f.batch_size, compute=ray.data.ActorPoolStrategy(size=f.num_actors),
                            num_gpus=f.num_gpus, num_cpus=f.num_cpus)
    return ds


def _finish_row(r: dict) -> dict:
    syn = list(r.get("synthetic_captions") if r.get("synthetic_captions") is not None else [])
    r["synthetic_captions"] = [str(x) for x in syn]
    if "kept_captions" not in r or r["kept_captions"] is None:  # no filter: every caption is kept
        r["kept_captions"] = [r["web_caption"], *syn] if r["status"] == "ok" else []
        r["candidate_scores"], r["web_caption_kept"] = [], r["status"] == "ok"
    r["kept_captions"] = [str(x) for x in r["kept_captions"]]
    r["candidate_scores"] = [float(x) for x in r["candidate_scores"]]
    return r


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
    sink_stats: list[dict] = []
    if todo and not cfg.capfilt.enabled:
        # One operator: Ray Data's per-operator resource reservation only idles CPUs here (on 2 cores it ran one
        # task at a time: 157 vs 205 images/s). Set before the dataset is made, which copies the context.
        ctx = ray.data.DataContext.get_current()
        reservation, ctx.op_resource_reservation_enabled = ctx.op_resource_reservation_enabled, False
        try:
            ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
            n, last = 0, time.time()
            for row in ds.map(_process_shard, fn_kwargs={"cfg": cfg, "names": names}).iter_rows():
                sink_stats.append(json.loads(row["stats"]))
                n += sink_stats[-1]["read"]
                last = _progress(cfg, t0, last, n, len(sink_stats), len(todo))
        finally:
            ctx.op_resource_reservation_enabled = reservation
    elif todo:
        ds = build_dataset(cfg, todo)
        sink = ShardSink(cfg.output, {}, names, cfg.sink.row_group_size)
        n, last = 0, time.time()
        for batch in ds.iter_batches(batch_format="pandas", batch_size=256):
            for r in batch.to_dict("records"):
                r = _finish_row(r)
                if r["source_shard"] not in sink.expected:
                    sink.expected[r["source_shard"]] = int(r["shard_records"])
                sink.add(r)
                n += 1
            last = _progress(cfg, t0, last, n, len(sink.done), len(todo))
        sink_stats = sink.done
        if sink.rows:
            raise RuntimeError(f"dataprep: shards {list(sink.rows)[:3]} ended incomplete")
    finished = list(finished_shards(cfg.output).values())
    summary = summarize(finished)
    write_output_manifest(cfg.output, finished)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    summary["shards_this_run"] = len(sink_stats)
    summary["records_per_second"] = round(sum(s["read"] for s in sink_stats) / max(summary["wall_seconds"], 1e-9), 1)
    assert summary["read"] == summary["kept"] + summary["filtered"] + summary["rejected"]
    storage.write_text(storage.join(cfg.output, "_summary.json"), json.dumps(summary, indent=2))
    print("dataprep summary: " + json.dumps(summary), flush=True)
    return summary
