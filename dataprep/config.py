"""Config schema of ``jobs/dataprep.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.storage import StorageConfig


@dataclass
class SourceConfig:
    # auto | webdataset | parquet (auto: by file extension; a .parquet beside a same-named .tar is img2dataset's
    # metadata of that tar, never a shard)
    format: str = "auto"
    image_column: str = "jpg"  # Parquet columns (img2dataset's names)
    caption_column: str = "caption"
    key_column: str = "key"


@dataclass
class SinkConfig:
    # Rows per Parquet row group of data/*.parquet: a training rank reads only the row groups of its span of a
    # file, so a group is its unit of reading (1,000 rows of 384-px JPEGs: about 50 MB).
    row_group_size: int = 1000


@dataclass
class ValidateConfig:
    max_image_pixels: int = 89_478_485  # Pillow's decompression-bomb limit, set explicitly
    min_size: int = 64  # shorter side, pixels (filtered below)
    max_aspect_ratio: float = 3.0  # long side / short side (filtered above)
    resize_shorter_side: int = 384  # re-encode at this shorter side (never upscaled)
    jpeg_quality: int = 90
    max_words: int = 50  # reference blip_caption max_words
    batch_size: int = 64


@dataclass
class PoolConfig:
    """One model stage's Ray Data actor pool. Ray Data grows it from ``min_actors`` to ``max_actors`` while the
    stage is the bottleneck and there are free resources (on an autoscaling cluster, pending actors ask for nodes)."""
    min_actors: int = 1
    max_actors: int = 1
    num_gpus: float = 0.0  # per actor; fractions pack several actors (e.g. a captioner and a filter) on one GPU
    num_cpus: float = 1.0  # per actor; leave CPUs for decoding (on a 2-core box, 0.5)
    batch_size: int = 16  # images per model call; an actor receives whole shards and cuts them into these
    # threads decoding + preprocessing the next batches while the model runs; each holds one preprocessed batch
    # (384-px float32: 1.8 MB per image). Size from bench/capfilt_gpu.py: threads x images/s per thread > GPU rate
    prepare_threads: int = 1
    max_tasks_in_flight_per_actor: int = 2  # shards queued at an actor: the next one is on hand, memory stays bounded
    dtype: str = "float32"  # float32 | float16 | bfloat16, on GPU only (CPU always runs float32)


@dataclass
class CaptionerConfig(PoolConfig):
    enabled: bool = True
    model: str = ""  # hub id, local dir or s3:// of an image-to-text transformers model
    num_captions: int = 10  # K
    top_p: float = 0.9
    max_length: int = 30
    prompt: str = ""  # stripped from the decoded captions (LAVIS's BLIP captioner used "a picture of ")
    seed: int = 0  # a sample's captions depend only on (seed, key, model)


@dataclass
class FilterConfig(PoolConfig):
    enabled: bool = True
    model: str = ""  # CLIPModel, Blip2ForImageTextRetrieval or BlipForImageTextRetrieval folder/hub id/s3://
    mode: str = "topk"  # topk: keep the top_k captions by similarity | itm: drop what the ITM head calls unmatched
    top_k: int = 2
    min_similarity: float | None = None  # topk mode: also drop captions below this similarity
    itm_threshold: float = 0.5  # itm mode: keep captions with p(match) >= this


@dataclass
class CapFiltConfig:
    enabled: bool = False
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class DataprepConfig:
    input: str = "???"  # directory, glob or file list of shards: local or s3://
    output: str = "???"
    source: SourceConfig = field(default_factory=SourceConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    capfilt: CapFiltConfig = field(default_factory=CapFiltConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    # None: connect to RAY_ADDRESS or start a local Ray; "local": a private Ray without a dashboard
    ray_address: str | None = None
    progress_interval_s: float = 10.0
