"""img2dataset output as it is: its metadata files are never shards, and a real crawl over HTTP on 127.0.0.1
(both output formats) goes through jobs/dataprep.py with the same counts, the delivered keys and captions, and
a rerun that adds nothing."""

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataprep.config import SourceConfig
from dataprep.sources import count_samples, list_shards, read_shard
from dataprep.validate import clean_caption
from pipeline import storage
from pipeline.manifest import read_manifest
from tests.img2dataset_crawl import CORPUS, crawl, serve, write_site, write_url_list


def _tar_bytes(samples: dict[str, dict[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _parquet_bytes(columns: dict) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _img2dataset_layout(root: str) -> None:
    """img2dataset's files as it names them: per shard a tar, its metadata .parquet (every URL, failed ones
    included) and _stats.json (webdataset/); per shard a .parquet with a jpg column and _stats.json (parquet/)."""
    for shard in ("00000", "00001"):
        keys = [f"{shard[-1]}0000{i}" for i in range(3)]  # two delivered, the last failed to download
        status = ["success", "success", "failed_to_download"]
        errors = [None, None, "HTTP Error 404: File not found"]
        meta = {"url": [f"http://x/{k}.jpg" for k in keys], "caption": [f"caption {k}" for k in keys], "key": keys,
                "status": status, "error_message": errors, "width": [8, 8, None], "sha256": ["a", "b", None]}
        stats = json.dumps({"count": 3, "successes": 2, "failed_to_download": 1, "failed_to_resize": 0})
        storage.write_bytes(f"{root}/webdataset/{shard}.tar", _tar_bytes(
            {k: {"jpg": b"img", "txt": f"caption {k}".encode(), "json": b"{}"} for k in keys[:2]}))
        storage.write_bytes(f"{root}/webdataset/{shard}.parquet", _parquet_bytes(meta))
        storage.write_text(f"{root}/webdataset/{shard}_stats.json", stats)
        storage.write_bytes(f"{root}/parquet/{shard}.parquet", _parquet_bytes({**meta, "jpg": [b"img", b"img", None]}))
        storage.write_text(f"{root}/parquet/{shard}_stats.json", stats)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_img2dataset_metadata_files_are_never_shards(where, tmp_path, request, monkeypatch):
    if where == "s3":
        root, scfg = request.getfixturevalue("s3_bucket")
        monkeypatch.setattr(storage, "_DEFAULT", scfg)  # the moto endpoint, for this test only
    else:
        root = str(tmp_path)
    _img2dataset_layout(root)
    cfg = SourceConfig()
    wds, par = f"{root}/webdataset", f"{root}/parquet"
    tars = [f"{wds}/00000.tar", f"{wds}/00001.tar"]
    assert list_shards(wds, cfg) == tars  # folder
    assert list_shards(f"{wds}/*", cfg) == tars  # glob over every file
    assert list_shards(f"{wds}/00001.tar,{wds}/00000.tar", cfg) == tars  # file list
    with pytest.raises(FileNotFoundError, match="metadata"):  # only metadata matched
        list_shards(f"{wds}/*.parquet", cfg)
    assert list_shards(par, cfg) == [f"{par}/00000.parquet", f"{par}/00001.parquet"]
    assert list_shards(f"{wds},{par}/00001.parquet", cfg) == sorted(tars + [f"{par}/00001.parquet"])
    assert count_samples(tars[0]) == 2 == count_samples(f"{par}/00000.parquet")

    for uri in (tars[0], f"{par}/00000.parquet"):  # both formats: two samples and one failed URL apart
        recs = read_shard(uri, cfg)
        assert [(r["key"], r["source_failed"]) for r in recs] == [
            ("000000", None), ("000001", None), ("000002", "HTTP Error 404: File not found")]
        assert [r["caption"] for r in recs[:2]] == [b"caption 000000", b"caption 000001"]
    meta = json.loads(read_shard(f"{par}/00000.parquet", cfg)[0]["meta"])  # img2dataset's columns travel in meta
    assert meta == {"url": "http://x/000000.jpg", "caption": "caption 000000", "key": "000000", "status": "success",
                    "error_message": None, "width": 8, "sha256": "a"}

    # A tar with fewer samples than its metadata's successes is incomplete: said, not read short.
    storage.write_bytes(tars[1], _tar_bytes({"100000": {"jpg": b"img", "txt": b"caption"}}))
    with pytest.raises(ValueError, match="00001.tar: 1 samples, but img2dataset's .*00001.parquet lists 2"):
        read_shard(tars[1], cfg)


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    """CORPUS crawled by img2dataset into both output formats; {format: folder} and the site's base URL."""
    d = tmp_path_factory.mktemp("img2dataset")
    write_site(str(d / "site"))
    with serve(str(d / "site")) as base:
        write_url_list(str(d / "urls.parquet"), base)
        crawl(str(d / "urls.parquet"), str(d / "crawl"))
    return {fmt: str(d / "crawl" / fmt) for fmt in ("webdataset", "parquet")}, base


def _delivered(folder: str) -> tuple[dict, dict]:
    """What img2dataset says it did, from its own files: ({key: row} of successes, {key: error_message} of the
    rest); the captions of the WebDataset output from its tars, read here with tarfile."""
    ok, failed = {}, {}
    for p in sorted(storage.glob(f"{folder}/*.parquet")):
        for r in pq.read_table(p).to_pylist():
            if r["status"] == "success":
                ok[r["key"]] = r
            else:
                failed[r["key"]] = r["error_message"]
    for p in storage.glob(f"{folder}/*.tar"):
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".txt"):
                    assert ok[m.name[:-4]]["caption"] == tar.extractfile(m).read().decode()
    return ok, failed


def _rows(out: str, sub: str) -> dict:
    return {r["key"]: r for p in storage.glob(f"{out}/{sub}/*.parquet") for r in pq.read_table(p).to_pylist()}


@pytest.mark.slow
def test_real_img2dataset_crawl_through_dataprep(crawled, tmp_path, capsys):
    import ray

    from jobs.dataprep import main

    folders, base = crawled
    name_of = {f"{base}/{name}": name for name, *_ in CORPUS}
    args = ["capfilt.enabled=false", "validate.min_size=64", "validate.resize_shorter_side=64",
            "sink.row_group_size=4", "ray_address=local"]
    try:
        summaries = {fmt: main([f"input={folder}", f"output={tmp_path / fmt}", *args]) for fmt, folder in folders.items()}
        printed = capsys.readouterr().out
        data_before = {p: storage.read_bytes(p) for p in storage.glob(f"{tmp_path}/webdataset/data/*.parquet")}
        rerun = main([f"input={folders['webdataset']}", f"output={tmp_path / 'webdataset'}", *args])
    finally:
        ray.shutdown()

    ok, failed = _delivered(folders["webdataset"])
    ok_pq, failed_pq = _delivered(folders["parquet"])
    assert {k: name_of[r["url"]] for k, r in ok.items()} == {k: name_of[r["url"]] for k, r in ok_pq.items()}
    assert failed == failed_pq and len(ok) + len(failed) == len(CORPUS)
    counts = ("read", "kept", "filtered", "rejected", "source_failed", "rejected_by_reason", "filtered_by_reason",
              "source_failed_by_reason", "shards")
    s = summaries["webdataset"]
    assert {k: s[k] for k in counts} == {k: summaries["parquet"][k] for k in counts}
    assert s["shards"] == 4 and s["read"] == len(ok) == s["kept"] + s["filtered"] + s["rejected"]
    assert s["source_failed"] == len(failed)
    # counted up front from img2dataset's _stats.json, without reading a shard
    assert printed.count(f"4 to do ({len(ok)} samples by img2dataset's _stats.json of 4)") == 2, printed
    want_failed = {}
    for msg in failed.values():
        want_failed[msg] = want_failed.get(msg, 0) + 1
    assert s["source_failed_by_reason"] == want_failed
    assert set(want_failed) == {"HTTP Error 404: File not found", "Image decoding error"}

    good = {k for k, r in ok.items() if name_of[r["url"]].startswith("good")}
    assert len(good) == sum(name.startswith("good") for name, *_ in CORPUS)
    kept = {fmt: _rows(str(tmp_path / fmt), "data") for fmt in folders}
    for fmt, rows in kept.items():  # the kept keys and captions are what img2dataset delivered
        assert set(rows) == good, fmt
        for k, r in rows.items():
            assert r["web_caption"] == clean_caption(ok[k]["caption"], 50)
            meta = json.loads(r["meta"])
            assert meta["url"] == ok[k]["url"] and meta["sha256"] == ok[k]["sha256"]
            assert (meta["original_width"], meta["original_height"]) == (ok[k]["original_width"],
                                                                         ok[k]["original_height"])
    for k in good:  # both formats give the same samples, bytes and metadata
        a, b = kept["webdataset"][k], kept["parquet"][k]
        assert (a["jpg"], a["web_caption"], json.loads(a["meta"])) == (b["jpg"], b["web_caption"], json.loads(b["meta"]))

    rejects = _rows(str(tmp_path / "parquet"), "rejects")
    by_name = {name_of[ok[k]["url"]]: r for k, r in rejects.items() if k in ok}
    assert {n: (r["status"], r["reason"]) for n, r in by_name.items()} == {
        "small0.jpg": ("filtered", "too_small"), "small1.png": ("filtered", "too_small"),
        "wide0.jpg": ("filtered", "aspect_ratio"), "nocap0.jpg": ("rejected", "empty_caption"),
        "nocap1.jpg": ("rejected", "empty_caption")}
    assert {k: (r["status"], r["reason"]) for k, r in rejects.items() if k in failed} == {
        k: ("source_failed", m) for k, m in failed.items()}

    for fmt in folders:  # the manifest: every data file with its rows, bytes and row groups of at most 4 rows
        entries = read_manifest(str(tmp_path / fmt))
        assert sorted(e.path for e in entries) == sorted(storage.glob(f"{tmp_path}/{fmt}/data/*.parquet"))
        for e in entries:
            md = pq.read_metadata(e.path)
            assert (e.rows, e.bytes) == (md.num_rows, os.path.getsize(e.path))
            assert e.row_groups == [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            assert max(e.row_groups) <= 4
        assert sum(e.rows for e in entries) == len(good)

    assert rerun["shards_this_run"] == 0 and {k: rerun[k] for k in counts} == {k: s[k] for k in counts}
    assert {p: storage.read_bytes(p) for p in storage.glob(f"{tmp_path}/webdataset/data/*.parquet")} == data_before
