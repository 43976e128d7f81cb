"""Parquet output, rejects table, per-shard progress markers (resume) and the accounting summary.

Output layout under ``<output>``:
  data/<shard>.parquet      kept records (schema: OUTPUT_SCHEMA)
  rejects/<shard>.parquet   every rejected or filtered record with its key, source, offset and reason, and every
                            URL img2dataset failed on (status "source_failed", reason: img2dataset's error_message)
  _progress/<shard>.json    written last, once both files above are complete: the shard is done; it holds the
                            shard's counts and its data file's rows, bytes and row groups (for the manifest)
  manifest.json             data/*.parquet with rows, bytes and rows per row group (pipeline/manifest.py)
  _summary.json, config.yaml
One task writes a whole shard (all its records arrive together, dataprep/shard_rows.py): both files, then
the marker last, so a killed run redoes only the shards without a marker and never duplicates a record.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.manifest import FileEntry, write_manifest
from pipeline.records import OUTPUT_SCHEMA

REJECTS_SCHEMA = pa.schema([("key", pa.string()), ("source_shard", pa.string()), ("offset", pa.int64()),
                            ("status", pa.string()), ("reason", pa.string())])


def _parquet_bytes(rows: list[dict], schema: pa.Schema, row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, row_group_size=row_group_size)
    return buf.getvalue()


def finish_row(r: dict) -> dict:
    """A record as written: captions and scores as plain lists; without a filter every caption is kept."""
    syn = list(r.get("synthetic_captions") if r.get("synthetic_captions") is not None else [])
    r["synthetic_captions"] = [str(x) for x in syn]
    if r.get("kept_captions") is None:
        r["kept_captions"] = [r["web_caption"], *syn] if r["status"] == "ok" else []
        r["candidate_scores"], r["web_caption_kept"] = [], r["status"] == "ok"
    r["kept_captions"] = [str(x) for x in r["kept_captions"]]
    r["candidate_scores"] = [float(x) for x in r["candidate_scores"]]
    return r


def write_shard(output: str, shard: str, name: str, rows: list[dict], row_group_size: int = 1000) -> dict:
    """Write one input shard's output (all its records): data, rejects, then the marker; return its stats.

    Called in the cluster (the writer task of dataprep/run.py), once per shard with every record of it, so
    the three files are written together and a shard is either complete (marker present) or redone whole.
    """
    rows = sorted((finish_row(r) for r in rows), key=lambda r: r["offset"])  # deterministic row order
    kept = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    failed = [r for r in rows if r["status"] == "source_failed"]  # not samples: never part of read
    data = _parquet_bytes([{k: r.get(k) for k in OUTPUT_SCHEMA.names} for r in kept], OUTPUT_SCHEMA, row_group_size)
    storage.write_bytes(storage.join(output, "data", f"{name}.parquet"), data)
    storage.write_bytes(storage.join(output, "rejects", f"{name}.parquet"),
                        _parquet_bytes([{k: r.get(k) for k in REJECTS_SCHEMA.names} for r in bad], REJECTS_SCHEMA))
    footer = pq.ParquetFile(io.BytesIO(data)).metadata  # of the bytes in hand: no re-read of the file
    stats = {"shard": shard, "read": len(rows) - len(failed), "kept": len(kept),
             "output": {"path": f"data/{name}.parquet", "rows": len(kept), "bytes": len(data),
                        "row_groups": [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]},
             "source_failed": len(failed),
             "source_failed_by_reason": dict(Counter(r["reason"] for r in failed)),
             "filtered": sum(r["status"] == "filtered" for r in rows),
             "rejected": sum(r["status"] == "rejected" for r in rows),
             "rejected_by_reason": dict(Counter(r["reason"] for r in rows if r["status"] == "rejected")),
             "filtered_by_reason": dict(Counter(r["reason"] for r in rows if r["status"] == "filtered"))}
    storage.write_text(storage.join(output, "_progress", f"{name}.json"), json.dumps(stats))
    return stats


def finished_shards(output: str) -> dict[str, dict]:
    """{input shard URI: its stats} for every shard whose progress marker exists."""
    out = {}
    for uri in storage.glob(storage.join(output, "_progress", "*.json")):
        stats = json.loads(storage.read_text(uri))
        out[stats["shard"]] = stats
    return out


def summarize(all_stats: list[dict]) -> dict:
    total = {"read": 0, "kept": 0, "filtered": 0, "rejected": 0, "source_failed": 0}
    rej, fil, src = Counter(), Counter(), Counter()
    for s in all_stats:
        for k in total:
            total[k] += s.get(k, 0)  # source_failed: absent in markers written before it was counted
        rej.update(s["rejected_by_reason"])
        fil.update(s["filtered_by_reason"])
        src.update(s.get("source_failed_by_reason", {}))
    return {**total, "rejected_by_reason": dict(sorted(rej.items())), "filtered_by_reason": dict(sorted(fil.items())),
            "source_failed_by_reason": dict(sorted(src.items())), "shards": len(all_stats)}


def write_output_manifest(output: str, all_stats: list[dict]) -> str:
    """``<output>/manifest.json`` of every finished shard's data file, from the rows, bytes and row groups its
    marker recorded when the file was written (no file is opened again)."""
    old = [s["shard"] for s in all_stats if "output" not in s]
    if old:
        raise ValueError(f"{output}/_progress: the markers of {old[:3]} have no output counts (written by an older "
                         "data prep); delete them to redo those shards, or build a manifest: python -m pipeline.manifest")
    return write_manifest(output, [FileEntry(path=storage.join(output, s["output"]["path"]), rows=s["output"]["rows"],
                                             bytes=s["output"]["bytes"], row_groups=list(s["output"]["row_groups"]))
                                   for s in sorted(all_stats, key=lambda s: s["output"]["path"])])
