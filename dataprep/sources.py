"""Input shards: WebDataset tars in img2dataset's layout (``KEY.jpg``/``.txt``/``.json``) or Parquet.

A shard is read whole by one Ray task (a shard is thousands of records, the data set is millions of
shards), streamed from local disk or s3:// without a local copy.
"""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from dataprep.config import SourceConfig
from pipeline import storage
from pipeline.records import read_tar


def list_shards(uri: str, cfg: SourceConfig) -> list[str]:
    """Sorted shard URIs: a directory (its *.tar / *.parquet), a glob, or a single file."""
    if any(c in uri for c in "*?["):
        found = storage.glob(uri)
    elif uri.endswith((".tar", ".parquet")):
        found = [uri]
    else:
        found = [u for u in storage.listdir(uri) if u.endswith((".tar", ".parquet"))]
    if cfg.format != "auto":
        found = [u for u in found if u.endswith(".tar" if cfg.format == "webdataset" else ".parquet")]
    if not found:
        raise FileNotFoundError(f"input {uri!r}: no .tar or .parquet shards found")
    return sorted(found)


def shard_name(uri: str) -> str:
    """Deterministic output name of an input shard: its file name without extension (+ a parent dir if nested)."""
    return uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def read_shard(uri: str, cfg: SourceConfig) -> list[dict]:
    """Every record of one shard as {key, image, caption (bytes), meta, source_shard, offset}."""
    if uri.endswith(".parquet"):
        return _read_parquet(uri, cfg)
    return read_tar(uri)


def _read_parquet(uri: str, cfg: SourceConfig) -> list[dict]:
    with storage.open_file(uri, "rb") as f:
        table = pq.read_table(io.BytesIO(f.read()))
    cols = table.column_names
    for c in (cfg.image_column, cfg.caption_column):
        if c not in cols:
            raise KeyError(f"{uri}: column {c!r} not found (columns: {cols}); set source.image_column/caption_column")
    rows = table.to_pylist()
    out = []
    for i, r in enumerate(rows):
        cap = r[cfg.caption_column]
        out.append({"key": str(r.get(cfg.key_column, f"{shard_name(uri)}_{i:06d}")), "image": r[cfg.image_column],
                    "caption": cap.encode("utf-8", "surrogatepass") if isinstance(cap, str) else cap,
                    "meta": r.get("json") or "", "source_shard": uri, "offset": i})
    return out
