"""pipeline/manifest.py: listing img2dataset-style folders, footers only, relative paths, local and S3."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.manifest import (
    MANIFEST_NAME,
    FileEntry,
    build_manifest,
    load_index,
    read_manifest,
    write_manifest,
)


def _parquet(uri, n, row_group_size, cfg=None):
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(n)], "jpg": [b"x" * 10] * n}), buf,
                   row_group_size=row_group_size)
    storage.write_bytes(uri, buf.getvalue(), cfg)


def _tar(uri, keys, extra=("txt", "json")):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for k in keys:
            for ext in ("jpg", *extra):
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = 3
                t.addfile(info, io.BytesIO(b"abc"))
    storage.write_bytes(uri, buf.getvalue())


def test_dataprep_layout_roundtrip_with_relative_paths(tmp_path):
    out = tmp_path / "prepped"
    _parquet(str(out / "data" / "a.parquet"), 25, 10)
    _parquet(str(out / "data" / "b.parquet"), 7, 10)
    entries = build_manifest(str(out))
    assert [(e.rows, e.row_groups) for e in entries] == [(25, [10, 10, 5]), (7, [7])]
    assert all(e.bytes == (out / "data" / n).stat().st_size for e, n in zip(entries, ("a.parquet", "b.parquet")))
    write_manifest(str(out), entries)
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert [f["path"] for f in doc["files"]] == ["data/a.parquet", "data/b.parquet"]
    moved = tmp_path / "moved"
    out.rename(moved)  # relative paths: the folder can move
    assert read_manifest(str(moved)) == [FileEntry(str(moved / "data" / n), e.rows, e.bytes, e.row_groups)
                                         for n, e in zip(("a.parquet", "b.parquet"), entries)]
    assert load_index(str(moved)) == read_manifest(str(moved))
    assert read_manifest(str(tmp_path)) is None


def test_img2dataset_webdataset_folder_counts_tars_only(tmp_path, capsys):
    d = tmp_path / "crawl"
    _tar(str(d / "00000.tar"), [f"0000{i}" for i in range(5)])
    _tar(str(d / "00001.tar"), [f"0001{i}" for i in range(3)], extra=())
    _parquet(str(d / "00000.parquet"), 9, 100)  # img2dataset's per-shard metadata: not a data file
    (d / "00000_stats.json").write_text(json.dumps({"count": 9, "successes": 5}))
    entries = load_index(str(d))
    assert [(e.path.rsplit("/", 1)[-1], e.rows, e.row_groups) for e in entries] == [("00000.tar", 5, []),
                                                                                     ("00001.tar", 3, [])]
    assert "python -m pipeline.manifest" in capsys.readouterr().err  # the hint to write a manifest


def test_glob_and_list_and_errors(tmp_path):
    for n in ("x1", "x2", "y1"):
        _parquet(str(tmp_path / f"{n}.parquet"), 4, 3)
    assert [e.path.rsplit("/", 1)[-1] for e in build_manifest(str(tmp_path / "x*.parquet"))] == ["x1.parquet",
                                                                                                 "x2.parquet"]
    both = f"{tmp_path}/y1.parquet,{tmp_path}/x2.parquet"
    assert [e.path.rsplit("/", 1)[-1] for e in build_manifest(both)] == ["x2.parquet", "y1.parquet"]
    with pytest.raises(FileNotFoundError, match="no data"):
        build_manifest(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST_NAME).write_text(json.dumps({"version": 1, "files": [{"path": "a"}]}))
    with pytest.raises(ValueError, match=r"files\[0\]"):
        read_manifest(str(tmp_path / "bad"))


def test_s3_manifest_and_cli(s3_bucket, monkeypatch):
    root, cfg = s3_bucket
    monkeypatch.setattr(storage, "_DEFAULT", cfg)  # the CLI and the readers take the default settings
    for i, n in enumerate((12, 30)):
        _parquet(f"{root}/ds/data/{i:05d}.parquet", n, 8, cfg)
    from pipeline.manifest import main

    uri = main([f"{root}/ds"])
    assert uri == f"{root}/ds/{MANIFEST_NAME}"
    entries = read_manifest(f"{root}/ds")
    assert [(e.path, e.rows, e.row_groups) for e in entries] == [
        (f"{root}/ds/data/00000.parquet", 12, [8, 4]), (f"{root}/ds/data/00001.parquet", 30, [8, 8, 8, 6])]
