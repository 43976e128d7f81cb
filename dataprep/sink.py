"""Parquet output, rejects table, per-shard progress markers (resume) and the accounting summary.

Output layout under ``<output>``:
  data/<shard>.parquet      kept records (schema: OUTPUT_SCHEMA)
  rejects/<shard>.parquet   every rejected or filtered record with its key, source, offset and reason
  _progress/<shard>.json    written last, once both files above are complete: the shard is done
  _summary.json, config.yaml
A shard's records are buffered until all of them arrived, then both files are written and the marker
last, so a killed run redoes only the shards without a marker and never duplicates a record.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.records import OUTPUT_SCHEMA

REJECTS_SCHEMA = pa.schema([("key", pa.string()), ("source_shard", pa.string()), ("offset", pa.int64()),
                            ("status", pa.string()), ("reason", pa.string())])


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


class ShardSink:
    def __init__(self, output: str, expected: dict[str, int], names: dict[str, str]):
        self.output, self.expected, self.names = output, expected, names
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self.done: list[dict] = []

    def add(self, row: dict) -> None:
        shard = row["source_shard"]
        self.rows[shard].append(row)
        if len(self.rows[shard]) == self.expected[shard]:
            self.flush(shard)

    def flush(self, shard: str) -> None:
        rows = sorted(self.rows.pop(shard), key=lambda r: r["offset"])  # deterministic row order
        name = self.names[shard]
        kept = [r for r in rows if r["status"] == "ok"]
        bad = [r for r in rows if r["status"] != "ok"]
        storage.write_bytes(storage.join(self.output, "data", f"{name}.parquet"),
                            _parquet_bytes([{k: r.get(k) for k in OUTPUT_SCHEMA.names} for r in kept], OUTPUT_SCHEMA))
        storage.write_bytes(storage.join(self.output, "rejects", f"{name}.parquet"),
                            _parquet_bytes([{k: r.get(k) for k in REJECTS_SCHEMA.names} for r in bad], REJECTS_SCHEMA))
        stats = {"shard": shard, "read": len(rows), "kept": len(kept),
                 "filtered": sum(r["status"] == "filtered" for r in rows),
                 "rejected": sum(r["status"] == "rejected" for r in rows),
                 "rejected_by_reason": dict(Counter(r["reason"] for r in rows if r["status"] == "rejected")),
                 "filtered_by_reason": dict(Counter(r["reason"] for r in rows if r["status"] == "filtered"))}
        storage.write_text(storage.join(self.output, "_progress", f"{name}.json"), json.dumps(stats))
        self.done.append(stats)


def finished_shards(output: str) -> dict[str, dict]:
    """{input shard URI: its stats} for every shard whose progress marker exists."""
    out = {}
    for uri in storage.glob(storage.join(output, "_progress", "*.json")):
        stats = json.loads(storage.read_text(uri))
        out[stats["shard"]] = stats
    return out


def summarize(all_stats: list[dict]) -> dict:
    total = {"read": 0, "kept": 0, "filtered": 0, "rejected": 0}
    rej, fil = Counter(), Counter()
    for s in all_stats:
        for k in total:
            total[k] += s[k]
        rej.update(s["rejected_by_reason"])
        fil.update(s["filtered_by_reason"])
    return {**total, "rejected_by_reason": dict(sorted(rej.items())), "filtered_by_reason": dict(sorted(fil.items())),
            "shards": len(all_stats)}
