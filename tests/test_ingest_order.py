"""The training order of pipeline/data.py without Ray: every sample once per epoch, at most two ranks per file,
exact resume at any position, and the decode path reading exactly the planned rows."""

import io
import tarfile
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import (
    DataConfig,
    Index,
    decode_windows,
    rank_plan,
    sample_order,
    steps_per_epoch,
    window_items,
)
from pipeline.manifest import FileEntry, build_manifest


def _uneven_index(seed=0, files=13):
    """Files of 0 to 60 rows in row groups of 1 to 9 rows, one file without row groups (a tar)."""
    rng = np.random.default_rng(seed)
    entries = []
    for f in range(files):
        groups = [int(n) for n in rng.integers(1, 10, size=int(rng.integers(0, 8)))]
        entries.append(FileEntry(f"/d/{f:03d}.parquet", sum(groups), 0, groups))
    entries.append(FileEntry("/d/x.tar", 17, 0, []))
    return Index(entries)


def _epoch(index, seed, epoch, world, batch, accum, window):
    """Each rank's full order for the epoch and its plan."""
    per_rank = steps_per_epoch(index, batch * accum, world) * batch * accum
    plans = [rank_plan(index, seed, epoch, world, r, per_rank, window) for r in range(world)]
    return [[s for it in window_items(p, index) for s in sample_order(it)] for p in plans], plans, per_rank


@pytest.mark.parametrize("world", range(1, 9))
@pytest.mark.parametrize("accum", [1, 3])
def test_every_sample_once_per_epoch(world, accum):
    index, batch = _uneven_index(), 2
    everything = {(p, r) for p, n in zip(index.paths, index.rows) for r in range(int(n))}
    for epoch in range(3):  # epoch boundaries: each epoch on its own, differently ordered
        orders, plans, per_rank = _epoch(index, 7, epoch, world, batch, accum, window=10)
        assert per_rank == (index.total // (batch * accum * world)) * batch * accum
        assert all(len(o) == per_rank for o in orders)  # every rank runs the same number of steps
        seen = [s for o in orders for s in o]
        assert len(seen) == len(set(seen)) and set(seen) <= everything  # nothing twice, nothing invented
        assert len(everything) - len(seen) < batch * accum * world  # only the remainder is dropped
        ranks_of = defaultdict(set)
        for r, p in enumerate(plans):
            for f in p.pieces[:, 0]:
                ranks_of[int(f)].add(r)
        longest = int(index.rows.max())
        if per_rank >= longest:
            assert max(len(v) for v in ranks_of.values()) <= 2  # contiguous spans: a file is read by <= 2 ranks
        for p in plans:  # a row group is read once per rank and epoch (windows end on group boundaries)
            assert max(Counter(map(tuple, p.pieces[:, :2].tolist())).values()) == 1
        if epoch == 0:
            first = orders
        else:
            assert orders != first


def test_exact_division_covers_everything_and_orders_differ_by_epoch():
    entries = [FileEntry(f"/d/{f}.parquet", n, 0, [n // 2, n - n // 2]) for f, n in enumerate([30, 6, 12, 24, 24])]
    index = Index(entries)  # 96 rows = 4 ranks x 3 steps x batch 4 x accum 2
    everything = {(e.path, r) for e in entries for r in range(e.rows)}
    a, _, _ = _epoch(index, 1, 0, 4, 4, 2, window=8)
    b, _, _ = _epoch(index, 1, 1, 4, 4, 2, window=8)
    assert {s for o in a for s in o} == everything == {s for o in b for s in o}
    assert a != b


def test_shuffle_is_bounded_by_the_window():
    index = Index([FileEntry(f"/d/{f}.parquet", 100, 0, [10] * 10) for f in range(4)])
    orders, plans, _ = _epoch(index, 3, 0, 1, 4, 1, window=25)
    widths = np.diff(plans[0].window_start)
    assert widths[:-1].min() >= 25 and widths.max() < 25 + 10  # >= window (but the last), < window + a group
    items = window_items(plans[0], index)
    assert [s for it in items for s in sample_order(it)] == orders[0]
    for j, it in enumerate(items):  # a window yields exactly its pieces' rows, shuffled
        rows = [(it["files"][f], r + k) for f, _, a, b, r in it["pieces"] for k in range(b - a)]
        got = orders[0][plans[0].window_start[j]:plans[0].window_start[j + 1]]
        assert sorted(got) == sorted(rows) and got != rows


@pytest.mark.parametrize("world,accum", [(1, 1), (3, 2), (8, 1)])
def test_resume_at_any_position_continues_the_same_order(world, accum):
    index, batch = _uneven_index(seed=4), 2
    orders, plans, per_rank = _epoch(index, 5, 2, world, batch, accum, window=9)
    for r, plan in enumerate(plans):
        for start in range(per_rank + 1):  # every sample position, so every step boundary too
            resumed = [s for it in window_items(plan, index, start) for s in sample_order(it)]
            assert resumed == orders[r][start:], (r, start)
        # what a restarted worker computes from (epoch, step) alone equals the uninterrupted run's tail
        step = per_rank // (batch * accum) // 2
        fresh = rank_plan(index, 5, 2, world, r, per_rank, 9)
        assert [s for it in window_items(fresh, index, step * batch * accum) for s in sample_order(it)] == \
            orders[r][step * batch * accum:]


def test_stale_manifest_is_named():
    with pytest.raises(ValueError, match="/d/a.parquet: row groups"):
        Index([FileEntry("/d/a.parquet", 10, 0, [4, 4])])


def _jpeg(i):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 16), (i * 7 % 256, 50, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def test_decode_reads_the_planned_rows_only(tmp_path, monkeypatch):
    """read_window / decode_windows on real files return the keys sample_order promises, row groups only."""
    sizes = [23, 5, 14]
    for f, n in enumerate(sizes):
        keys = [f"f{f}_{r:03d}" for r in range(n)]
        pq.write_table(pa.table({"key": keys, "jpg": [_jpeg(r) for r in range(n)],
                                 "kept_captions": [[f"cap {k}"] for k in keys], "extra": ["x" * 50] * n}),
                       tmp_path / f"{f}.parquet", row_group_size=4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for r in range(6):
            for ext, data in (("jpg", _jpeg(r)), ("txt", f"tar cap {r}".encode())):
                info = tarfile.TarInfo(f"t_{r:03d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    (tmp_path / "9.tar").write_bytes(buf.getvalue())
    index = Index(build_manifest(f"{tmp_path}/*.parquet,{tmp_path}/9.tar", progress=False))
    assert index.total == sum(sizes) + 6
    read_groups = []
    orig = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, columns=None, **kw: read_groups.append(columns) or orig(
                            self, groups, columns=columns, **kw))
    cfg = DataConfig(uri=str(tmp_path), image_size=8, shuffle_window=7, decode_batch_size=3)
    world, batch = 2, 3
    per_rank = steps_per_epoch(index, batch, world) * batch
    for rank in range(world):
        plan = rank_plan(index, 0, 1, world, rank, per_rank, cfg.shuffle_window)
        for start in (0, 4):
            items = window_items(plan, index, start)
            want = [s for it in items for s in sample_order(it)]
            import json

            out = [b for it in items for b in decode_windows({"window": [json.dumps(it)]}, cfg, seed=0)]
            keys = [k for b in out for k in b["key"]]
            expect = [(f"{tmp_path}/{k.split('_')[0][1:]}.parquet" if k.startswith("f") else f"{tmp_path}/9.tar",
                       int(k.split("_")[1])) for k in keys]
            assert expect == want
            assert all(b["pixel_values"].shape[1:] == (3, 8, 8) for b in out)
            caps = [c for b in out for c in b["caption"]]
            assert all(c in (f"cap {k}", f"tar cap {int(k.split('_')[1])}") for c, k in zip(caps, keys))
    assert read_groups and all(c == ["key", "jpg", "kept_captions"] for c in read_groups)  # never "extra"


def test_workers_read_one_manifest(tmp_path):
    """Without a manifest at data.uri the driver lists once and the run dir gets the manifest the workers read."""
    from pipeline.data import index_location
    from pipeline.manifest import MANIFEST_NAME, write_manifest

    data, run = tmp_path / "prepped", tmp_path / "run"
    for f, n in enumerate((9, 4)):
        (data / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"key": [str(i) for i in range(n)]}), data / "data" / f"{f}.parquet",
                       row_group_size=5)
    assert index_location(str(data), str(run)) == str(run)
    assert Index.load(str(run)).rows.tolist() == [9, 4] and (run / MANIFEST_NAME).exists()
    write_manifest(str(data), build_manifest(str(data), progress=False))
    assert index_location(str(data), str(tmp_path / "run2")) == str(data)
    assert not (tmp_path / "run2").exists()
