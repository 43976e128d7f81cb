"""Config schemas of the training jobs (jobs/stage1.py, jobs/stage2.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data import DataConfig
from pipeline.models.stage1 import Stage1ModelConfig
from pipeline.models.stage2 import Stage2ModelConfig
from pipeline.storage import StorageConfig


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak (paper)
    min_lr: float = 1e-5  # cosine floor (paper gives 5e-5 for stage 2; stage 1 unspecified, LAVIS uses 1e-5)
    warmup_steps: int = 2000
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.05
    grad_clip: float = 0.0  # 0 = off (reference: no clipping)


@dataclass
class TrainConfig:
    run_name: str = "blip2-stage1"
    storage_path: str = "outputs/runs"  # local or s3://; checkpoints, metrics and config go to <storage_path>/<run_name>
    seed: int = 42
    batch_size: int = 100  # per worker, per micro step
    grad_accum: int = 1
    max_steps: int = 250_000
    checkpoint_every: int = 1000
    num_to_keep: int = 2
    log_every: int = 10  # console
    # ray.train.report interval. Not every step: Ray Train 2.60's per-worker result queue holds one report and the
    # controller drains it every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), so per-step reports cap training at
    # ~0.5 steps/s. Every step still goes to the run log and TensorBoard.
    report_every: int = 50
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    zero_stage: int = 2  # 0 | 1 | 2 | 3
    # ZeRO-3: parameters of at most this many elements stay whole on every rank (DeepSpeed's default); larger ones,
    # trainable or frozen (the LLM too), are split across ranks. 0 splits every parameter.
    zero3_persistence_threshold: int = 100_000
    # Checkpoints are written here first (the step loop waits only for that) and uploaded in the background;
    # None = the system temp folder. Needs room for one checkpoint of this worker's.
    checkpoint_staging_dir: str | None = None
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    max_failures: int = 3  # worker-group restarts (Ray Train FailureConfig)
    # None: RAY_ADDRESS or a running cluster, else a new local Ray; "local": always a private Ray for this run
    # only, started without a dashboard (it would stop with the run; saves ~2 CPU-seconds per start)
    ray_address: str | None = None


@dataclass
class Stage1JobConfig:
    model: Stage1ModelConfig = field(default_factory=Stage1ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass
class Stage2JobConfig:
    model: Stage2ModelConfig = field(default_factory=Stage2ModelConfig)
    init_from: str | None = None  # stage-1 checkpoint URI (its model.safetensors); text-only parts are dropped
    init_from_hf: str | None = None  # or a Blip2ForConditionalGeneration folder (e.g. a released checkpoint)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(min_lr=5e-5))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_name="blip2-stage2", max_steps=80_000))
    storage: StorageConfig = field(default_factory=StorageConfig)
