"""Input shards, img2dataset output as it is: WebDataset tars (``KEY.jpg``/``.txt``/``.json``) or Parquet.

img2dataset writes per shard ``NNNNN``: the samples (``NNNNN.tar``, or ``NNNNN.parquet`` with a ``jpg`` column),
``NNNNN_stats.json`` (its counts) and, beside a tar, ``NNNNN.parquet`` holding the metadata of every URL of the
shard, those it failed on included (no image column). So a .parquet beside a .tar of the same name is that tar's
metadata, never a shard, and a ``_stats.json`` is never a shard. Rows img2dataset failed on (``status`` not
``success``) are not samples: they come back as records whose ``source_failed`` is img2dataset's error message,
so that data prep counts them apart from what it read, and both output formats of one crawl count the same.

A shard is read whole by one Ray task (a shard is thousands of records, the data set is millions of
shards), streamed from local disk or s3:// without a local copy.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from dataprep.config import SourceConfig
from pipeline import storage
from pipeline.records import read_tar

SHARD_EXTS = (".tar", ".parquet")
SUCCESS = "success"  # img2dataset's status of a delivered sample


def _stem(uri: str) -> str:
    return uri.rsplit(".", 1)[0]


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def list_shards(uri: str, cfg: SourceConfig) -> list[str]:
    """Sorted shard URIs of ``uri``: a folder (its *.tar / *.parquet), a glob, a file, or several of these
    separated by commas. img2dataset's metadata files (a .parquet beside a same-named .tar, *_stats.json) are
    never shards; each folder is listed once."""
    listings: dict[str, list[str]] = {}

    def listing(folder: str) -> list[str]:
        if folder not in listings:
            listings[folder] = storage.listdir(folder)
        return listings[folder]

    found: set[str] = set()
    for part in (p.strip() for p in uri.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            found.update(storage.glob(part))
        elif part.endswith(SHARD_EXTS):
            found.add(part)
        else:
            children = listing(part)
            if children:
                listings.setdefault(_parent(children[0]), children)  # keyed as the children name their folder
            found.update(children)
    tars = {_stem(u) for u in found if u.endswith(".tar")}
    shards = []
    for u in sorted(found):
        if u.endswith(".tar"):
            shards.append(u)
        elif u.endswith(".parquet") and _stem(u) not in tars and _stem(u) + ".tar" not in listing(_parent(u)):
            shards.append(u)
    if cfg.format != "auto":
        shards = [u for u in shards if u.endswith(".tar" if cfg.format == "webdataset" else ".parquet")]
    if not shards:
        raise FileNotFoundError(f"input {uri!r}: no .tar or .parquet shards found (a .parquet beside a same-named "
                                ".tar is img2dataset's metadata of that tar, not a shard)")
    return shards


def shard_name(uri: str) -> str:
    """Deterministic output name of an input shard: its file name without extension (+ a parent dir if nested)."""
    return uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def count_samples(uri: str) -> int | None:
    """Samples in a shard by img2dataset's ``NNNNN_stats.json`` (its ``successes``), without reading the shard;
    None where there is no stats file."""
    try:
        return int(json.loads(storage.read_text(_stem(uri) + "_stats.json"))["successes"])
    except FileNotFoundError:
        return None


def read_shard(uri: str, cfg: SourceConfig) -> list[dict]:
    """Every record of one shard as {key, image, caption (bytes), meta, source_shard, offset, source_failed}.

    ``source_failed`` is None for a sample and img2dataset's error message for a URL it failed on (from the
    Parquet itself, or for a tar from its metadata .parquet, where ``offset`` is the row in that file)."""
    if uri.endswith(".parquet"):
        return _read_parquet(uri, cfg)
    samples = [{**r, "source_failed": None} for r in read_tar(uri)]
    return samples + _tar_failures(uri, len(samples))


def _failed(key: str, uri: str, offset: int, status: str, message: str | None) -> dict:
    return {"key": key, "image": None, "caption": None, "meta": "", "source_shard": uri, "offset": offset,
            "source_failed": message or status}


def _tar_failures(uri: str, num_samples: int) -> list[dict]:
    """The URLs img2dataset failed on in this tar's shard, from its metadata .parquet (none if there is none)."""
    meta_uri = _stem(uri) + ".parquet"
    try:
        data = storage.read_bytes(meta_uri)
    except FileNotFoundError:
        return []
    t = pq.read_table(io.BytesIO(data), columns=["key", "status", "error_message"])
    rows = t.to_pylist()
    successes = sum(r["status"] == SUCCESS for r in rows)
    if successes != num_samples:
        raise ValueError(f"{uri}: {num_samples} samples, but img2dataset's {meta_uri} lists {successes} successes; "
                         "the tar is incomplete or does not belong to that metadata")
    return [_failed(str(r["key"]), uri, i, r["status"], r["error_message"])
            for i, r in enumerate(rows) if r["status"] != SUCCESS]


def _read_parquet(uri: str, cfg: SourceConfig) -> list[dict]:
    with storage.open_file(uri, "rb") as f:
        table = pq.read_table(io.BytesIO(f.read()))
    cols = table.column_names
    for c in (cfg.image_column, cfg.caption_column):
        if c not in cols:
            raise KeyError(f"{uri}: column {c!r} not found (columns: {cols}); set source.image_column/caption_column"
                           " (a .parquet without images beside a .tar is img2dataset's metadata of that tar)")
    # Without a "json" column, meta is every column but the binary ones: img2dataset's url, similarity, width,
    # height, original size, sha256, exif, ..., the same fields its WebDataset output puts in each KEY.json.
    meta_cols = [c for c in cols if not pa.types.is_binary(table.schema.field(c).type)
                 and not pa.types.is_large_binary(table.schema.field(c).type)]
    out = []
    for i, r in enumerate(table.to_pylist()):
        key = str(r.get(cfg.key_column, f"{shard_name(uri)}_{i:06d}"))
        status = r["status"] if "status" in cols else SUCCESS  # img2dataset's; plain Parquet has none
        if status != SUCCESS:
            out.append(_failed(key, uri, i, str(status), r.get("error_message")))
            continue
        cap = r[cfg.caption_column]
        meta = r["json"] if "json" in cols else json.dumps({c: r[c] for c in meta_cols}, default=str)
        out.append({"key": key, "image": r[cfg.image_column],
                    "caption": cap.encode("utf-8", "surrogatepass") if isinstance(cap, str) else cap,
                    "meta": meta or "", "source_shard": uri, "offset": i, "source_failed": None})
    return out
