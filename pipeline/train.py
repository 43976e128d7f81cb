"""The per-worker training loop (DeepSpeed engine under Ray Train) and the driver-side ``fit``.

Checkpoints are written by this loop, not through Ray's checkpoint upload: every rank saves its DeepSpeed
files (its ZeRO optimizer shard, rank 0 also ``model.yaml`` / ``model.safetensors`` with the trainable weights,
gathered under ZeRO-3) plus its RNG state to a local staging folder; that is all the step loop waits for. A
background upload per rank (pipeline/checkpoint_upload.py) copies it to ``<run>/checkpoints/step_XXXXXXXX/``, and
when every rank's files are in, rank 0 writes the ``COMPLETE`` marker and then ``latest.json``. A restarted worker
group (``FailureConfig``) and a rerun of the same command both start from ``latest.json``, so a half-written
checkpoint is never loaded; checkpoint folders it does not name as complete are removed on resume.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from pipeline import checkpoint as ckpt
from pipeline import data as D
from pipeline import storage
from pipeline.checkpoint_upload import CheckpointUploader, commit
from pipeline.config import merge
from pipeline.optim import lr_lambda
from pipeline.run_log import RunLog, load_rows
from pipeline.stages import Stage, get_stage


def deepspeed_config(cfg) -> dict:
    t = cfg.train
    precision = t.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    ds = {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": t.grad_accum,
          "zero_optimization": {"stage": t.zero_stage}, "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if t.zero_stage == 3:
        # Checkpoints gather the trainable weights themselves (checkpoint.trainable_state), never the frozen ones.
        ds["zero_optimization"].update(stage3_gather_16bit_weights_on_model_save=False,
                                       stage3_param_persistence_threshold=t.zero3_persistence_threshold)
    if cfg.optim.grad_clip > 0:
        ds["gradient_clipping"] = cfg.optim.grad_clip
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif precision == "fp16":
        if not torch.cuda.is_available():  # DeepSpeed 0.19 would stop with "Type fp16 is not supported on your device"
            raise ValueError("train.precision=fp16 needs a GPU: DeepSpeed has no fp16 on CPU; use fp32 or bf16")
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return ds


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(engine, model, stage: Stage, cfg, run_uri: str, step: int, epoch_state: dict,
                    uploader: CheckpointUploader) -> str:
    """Write this rank's part of checkpoint ``step`` locally and start its upload; returns the checkpoint URI.

    Blocks for the previous upload if it is still running (never two at once) and for the local write; every rank
    calls it (DeepSpeed's save and the ZeRO-3 gather are collectives)."""
    rank = dist.get_rank()
    tag = f"step_{step:08d}"
    uri = storage.join(run_uri, "checkpoints", tag)
    uploader.wait()  # raises here if the previous checkpoint could not be written
    staging = tempfile.mkdtemp(prefix=f"ckpt-{tag}-", dir=cfg.train.checkpoint_staging_dir)
    engine.save_checkpoint(staging, tag=tag, client_state={"step": step, **epoch_state}, save_latest=False,
                           exclude_frozen_parameters=True)
    local = os.path.join(staging, tag)
    torch.save(_rng_state(), os.path.join(local, f"rng_rank{rank:05d}.pt"))
    state = ckpt.trainable_state(model)  # ZeRO-3: gathered (all ranks take part), kept on rank 0 only
    if rank == 0:  # model.yaml + the trainable weights, for export and stage 2
        ckpt.write_model_files(model, stage.name, state, local)
    del state
    uploader.start(local, uri, lambda: commit(run_uri, uri, tag, step, cfg.train.num_to_keep))
    return uri


def _split_summary(model) -> str:
    """How much of the model ZeRO-3 partitioned (parameters above the persistence threshold), trainable and frozen."""
    out = []
    for kind, want in (("trainable", True), ("frozen", False)):
        ps = [p for p in model.parameters() if p.requires_grad == want]
        split = [p for p in ps if hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel]
        n = sum(getattr(p, "ds_numel", p.numel()) for p in ps)
        out.append(f"{kind} {len(split)}/{len(ps)} tensors, {sum(p.ds_numel for p in split) / 1e6:.2f}M/{n / 1e6:.2f}M "
                   "elements")
    return ", ".join(out)


def discard_uncommitted(run_uri: str, latest: dict | None) -> None:
    """Remove checkpoint folders that latest.json does not name and that are newer than it or incomplete: what a
    failed attempt left. Without this a stale rank marker from that attempt could complete a new checkpoint of the
    same step before this attempt's files were in. Rank 0, before the first step (no upload is running)."""
    tag = latest["tag"] if latest else ""
    for uri in storage.listdir(storage.join(run_uri, "checkpoints")):
        name = uri.rsplit("/", 1)[-1]
        if name != tag and (name > tag or not ckpt.is_complete(uri)):
            print(f"[train] removing {uri}: not committed (left by an interrupted attempt)", flush=True)
            storage.remove(uri)


def latest_checkpoint(run_uri: str) -> dict | None:
    path = storage.join(run_uri, "latest.json")
    if not storage.exists(path):
        return None
    latest = json.loads(storage.read_text(path))
    if not ckpt.is_complete(latest["uri"]):
        raise RuntimeError(f"{path} points at {latest['uri']}, which is not complete")
    return latest


def load_checkpoint(engine, latest: dict) -> dict:
    rank = dist.get_rank()
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, latest["tag"])
        os.makedirs(local)
        src = storage.local_copy(latest["uri"], local) if storage.is_s3(latest["uri"]) else latest["uri"]
        _, client = engine.load_checkpoint(os.path.dirname(src), tag=os.path.basename(src), load_module_strict=False,
                                           load_optimizer_states=True, load_lr_scheduler_states=True)
        _set_rng_state(torch.load(os.path.join(src, f"rng_rank{rank:05d}.pt"), weights_only=True))
    return client


@dataclass
class Worker:
    """One training worker's state: what setup builds and the step and bookkeeping use."""

    stage: Stage
    cfg: Any
    engine: Any
    sched: Any
    rank: int
    world: int
    run_uri: str
    step: int = 0
    log: RunLog | None = None
    pending_keys: list = field(default_factory=list)  # this rank's sample keys per step since the last checkpoint
    window: list = field(default_factory=list)  # metrics since the last ray.train.report
    uploader: CheckpointUploader | None = None


def setup(config: dict) -> Worker:
    """Seeds, the model under DeepSpeed, and the resume point (the latest complete checkpoint, if any)."""
    import deepspeed
    import ray.train
    from omegaconf import OmegaConf

    stage = get_stage(config["stage"])
    cfg = merge(stage.job_config(), OmegaConf.create(config["cfg"]))
    storage.set_default(cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t = cfg.train
    torch.manual_seed(t.seed + rank)
    random.seed(t.seed + rank)
    model = stage.build(cfg)
    opt = torch.optim.AdamW(stage.param_groups(model, cfg), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg.optim.warmup_steps, t.max_steps,
                                                                       cfg.optim.lr, cfg.optim.min_lr))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=deepspeed_config(cfg), dist_init_required=False)
    w = Worker(stage, cfg, engine, sched, rank, world, storage.join(t.storage_path, t.run_name),
               uploader=CheckpointUploader(rank, world))
    if rank == 0:
        print(f"[train] {stage.name}: {world} worker(s), {torch.get_num_threads()} torch threads each, "
              f"device {engine.device}", flush=True)
        if t.zero_stage == 3:
            print(f"[train] ZeRO-3 split across {world} ranks: {_split_summary(model)}", flush=True)
    latest = latest_checkpoint(w.run_uri)
    if latest:
        w.step = int(load_checkpoint(engine, latest)["step"])
        if rank == 0:
            print(f"[train] resumed from {latest['uri']} at step {w.step}", flush=True)
    if rank == 0:
        discard_uncommitted(w.run_uri, latest)
    w.log = RunLog(w.run_uri, w.step) if rank == 0 else None
    return w


def train_step(w: Worker, micro_batches, text_rng: random.Random) -> tuple[dict, dict, float]:
    """One optimizer step over ``grad_accum`` micro-batches: (losses averaged over the micro-batches, the last
    batch with every micro-batch's keys, seconds waiting for data)."""
    t, wait, micro = w.cfg.train, 0.0, 0
    sums: dict[str, torch.Tensor] = {}
    keys: list[str] = []
    for batch in micro_batches:
        wait += batch.pop("_wait")
        text_rng.seed(hash((t.seed, w.rank, w.step, micro)) & 0xFFFFFFFF)
        out = w.engine(**w.stage.inputs(w.engine.module, batch, w.engine.device, text_rng))
        losses = w.stage.losses(out)
        w.engine.backward(losses["loss"])
        w.engine.step()  # DeepSpeed steps the optimizer on the last micro-batch only
        micro += 1
        keys += batch["key"]
        for k, v in losses.items():
            sums[k] = sums[k] + v.detach() if k in sums else v.detach()
        if micro == t.grad_accum:
            return {k: v / micro for k, v in sums.items()}, {**batch, "key": keys}, wait
    raise StopIteration


def bookkeeping(w: Worker, m: dict, keys: list[str], epoch: int) -> None:
    """Log, report to Ray Train and checkpoint, each at its own interval."""
    import ray.train

    t = w.cfg.train
    w.uploader.check()  # a checkpoint whose upload failed fails the run here, naming it
    w.window.append(m)
    w.pending_keys.append(keys)
    if w.log:
        w.log.append(m)
        if w.step % t.log_every == 0 or w.step == t.max_steps:
            print(f"[train] step {w.step}/{t.max_steps} loss {m['loss']:.4f} lr {m['lr']:.2e} "
                  f"{m['samples_per_s']:.1f} samples/s wait {m['data_wait_frac']:.2f}", flush=True)
    if w.step % t.report_every == 0 or w.step == t.max_steps:
        ray.train.report(_window_means(w.window))
        w.window = []
    if w.step % t.checkpoint_every == 0 or w.step == t.max_steps:
        w.uploader.wait()  # the previous checkpoint's upload: never two at once, and a failed one stops us here
        _attach_keys(w.log.pending if w.log else [], w.pending_keys, w.world, w.rank)  # one gather per checkpoint
        w.pending_keys = []
        # Metrics first: once latest.json names this step, its rows must already be in storage (a node lost
        # between the two would otherwise resume without them; seen in the node-preemption test).
        if w.log:
            w.log.flush()
        save_checkpoint(w.engine, w.engine.module, w.stage, w.cfg, w.run_uri, w.step, {"epoch": epoch}, w.uploader)


def train_loop_per_worker(config: dict) -> None:
    w = setup(config)
    t, data = w.cfg.train, w.cfg.data
    index = D.Index.load(config["index"])
    global_batch = t.batch_size * t.grad_accum * w.world
    per_epoch = D.steps_per_epoch(index, t.batch_size * t.grad_accum, w.world)
    if per_epoch == 0:
        raise ValueError(f"data.uri {data.uri!r}: fewer samples than one global batch ({global_batch})")
    text_rng = random.Random(t.seed + w.rank)
    while w.step < t.max_steps:
        epoch, in_epoch = divmod(w.step, per_epoch)
        batches = _timed(D.rank_batches(index, data, t.seed, t.batch_size, t.grad_accum, w.world, w.rank, epoch,
                                        in_epoch))
        t_prev = time.time()  # step time = wall clock between steps: data, compute, report, checkpoint
        while w.step < t.max_steps:
            try:
                losses, batch, wait = train_step(w, batches, text_rng)
            except StopIteration:
                break
            w.step += 1
            now = time.time()
            dt, t_prev = max(now - t_prev, 1e-9), now
            m = {"step": w.step, "epoch": epoch, **{k: float(v) for k, v in losses.items()},
                 "lr": w.sched.get_last_lr()[0], "grad_norm": float(w.engine.get_global_grad_norm() or 0.0),
                 "samples_per_s": global_batch / dt, "data_wait_frac": wait / dt}
            bookkeeping(w, m, batch["key"], epoch)
            if w.step % per_epoch == 0:
                break
    w.uploader.wait()  # the last checkpoint is committed before the worker returns
    if w.log:
        w.log.flush(plot=True)
        w.log.close()


def _window_means(rows: list[dict]) -> dict:
    """What goes to ``ray.train.report``: the last step's step/epoch/lr, the window's mean of everything else."""
    out = {k: rows[-1][k] for k in ("step", "epoch", "lr")}
    for k in rows[-1]:
        if k not in out and k != "keys":
            out[k] = sum(r[k] for r in rows) / len(rows)
    return out


def _attach_keys(metrics_log: list[dict], pending: list[list[str]], world: int, rank: int) -> None:
    """Record the global batch's keys (rank 0's, then rank 1's, ...) in the last len(pending) metric rows."""
    gathered = [None] * world
    dist.all_gather_object(gathered, pending)
    if rank == 0:
        for i, row in enumerate(metrics_log[len(metrics_log) - len(pending):]):
            row["keys"] = [k for per_rank in gathered for k in per_rank[i]]


def _timed(it):
    """Yield items of ``it`` with the seconds spent waiting for each under '_wait'."""
    while True:
        t0 = time.time()
        try:
            item = next(it)
        except StopIteration:
            return
        item["_wait"] = time.time() - t0
        yield item


def fit(cfg, stage: str | Stage) -> dict:
    """Driver side: run the training loop of ``stage`` on a Ray Train worker group; returns the last metrics."""
    import ray
    import ray.train
    from omegaconf import OmegaConf
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.config import save_config

    t = cfg.train
    storage.set_default(cfg.storage)
    run_uri = storage.join(t.storage_path, t.run_name)
    save_config(cfg, storage.join(run_uri, "config.yaml"))
    env = {k: v for k, v in os.environ.items() if k in ("AWS_ENDPOINT_URL", "PYTHONPATH", "DS_BUILD_OPS",
                                                       "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")}
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # else Ray Train tees worker prints to stderr: every line twice
    if not ray.is_initialized():
        ray.init(address=t.ray_address, runtime_env={"env_vars": env}, log_to_driver=True,
                 include_dashboard=False if t.ray_address == "local" else None)
    _pin_ray_data_actors_here()
    use_gpu = t.gpus_per_worker > 0
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": get_stage(stage).name if not isinstance(stage, Stage) else stage.name,
                           "cfg": OmegaConf.to_container(cfg, resolve=True),
                           "index": D.index_location(cfg.data.uri, run_uri)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=t.run_name, storage_path=_ray_storage(t.storage_path),
                                       storage_filesystem=_ray_fs(t.storage_path),
                                       failure_config=ray.train.FailureConfig(max_failures=t.max_failures)),
    )
    trainer.fit()
    rows = load_rows(run_uri, t.max_steps, keys=False)
    return rows[-1] if rows else {}


def _pin_ray_data_actors_here() -> None:
    """Create Ray Data's two detached actors on the driver's node before the workers do.

    Ray Data pins its stats actor and autoscaling coordinator (``lifetime="detached"``) to the node of the first
    process that runs a dataset. Under Ray Train that is a training worker, so they would outlive the job on a GPU
    node and keep it from ever being idle: the autoscaler could not remove it. Private APIs, hence the guard.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:  # another Ray version: nothing to pin
        return
    get_or_create_stats_actor()
    get_or_create_autoscaling_coordinator()


def _ray_storage(path: str) -> str:
    return storage.pyarrow_filesystem(path)[1] if storage.is_s3(path) else os.path.abspath(path)


def _ray_fs(path: str):
    return storage.pyarrow_filesystem(path)[0] if storage.is_s3(path) else None
