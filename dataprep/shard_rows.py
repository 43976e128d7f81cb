"""A whole input shard as one Ray Data row: ``{"shard": URI, "records": Arrow IPC stream of its records}``.

The CapFilt pipeline moves shards, not records, between its stages. Ray Data never splits a row, so every stage
(read + validate task, captioner actor, filter actor, writer task) holds one complete shard. The writer can then
write a shard's Parquet files and its progress marker at once, in the cluster: nothing waits for the other
records of a shard and no driver or actor buffers rows across shards. Memory per task or actor is bounded by
the shard size (img2dataset's default 10,000 samples: ~0.5 GB at 50 KB per image), whatever the data set size.
"""

from __future__ import annotations

import pyarrow as pa


def pack(shard: str, records: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist(records)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    # large_binary: a shard's stream can exceed binary's 2 GiB offsets once several rows share a block
    return pa.table({"shard": pa.array([shard], pa.string()),
                     "records": pa.array([sink.getvalue().to_pybytes()], pa.large_binary())})


def unpack(batch: pa.Table) -> list[tuple[str, list[dict]]]:
    """[(shard URI, its records)] of a Ray Data batch of shard rows."""
    out = []
    for shard, blob in zip(batch.column("shard").to_pylist(), batch.column("records").to_pylist()):
        out.append((shard, pa.ipc.open_stream(pa.py_buffer(blob)).read_all().to_pylist()))
    return out


def per_shard(fn, batch: pa.Table) -> pa.Table:
    """Apply ``fn(records) -> records`` to every shard row of ``batch``."""
    return pa.concat_tables([pack(shard, fn(records)) for shard, records in unpack(batch)])
