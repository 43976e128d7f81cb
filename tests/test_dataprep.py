"""Data prep on Ray Data: every bad-input kind counted under its reason, accounting, S3, kill-and-rerun."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from demo.synthetic import SyntheticConfig, generate
from pipeline import storage
from tests.procs import child_env, run_ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ray_local(moto_server):  # after moto sets the AWS env, which Ray workers inherit
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def _img(mode, size=(96, 96), fmt="PNG", color=None):
    if mode == "I;16":
        im = Image.new("I;16", size)
        im.putdata([(i * 37) % 65535 for i in range(size[0] * size[1])])
    else:
        im = Image.new(mode, size, color if color is not None else 100)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _jpeg(size=(96, 96)):
    return _img("RGB", size, "JPEG", (200, 10, 10))


def _bomb():
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 400M pixels, a few hundred KB on disk
    return buf.getvalue()


BAD_CORPUS = [  # (key, image bytes, caption bytes, expected status, expected reason)
    ("good1", _jpeg(), b"A red square.", "ok", ""),
    ("corrupt", b"not an image at all", b"a caption", "rejected", "corrupt_image"),
    ("truncated", _jpeg((400, 400))[:300], b"a caption", "rejected", "corrupt_image"),
    ("zero", b"", b"a caption", "rejected", "empty_image"),
    ("bomb", _bomb(), b"a caption", "rejected", "decompression_bomb"),
    ("cmyk", _img("CMYK", fmt="JPEG"), b"cmyk image", "ok", ""),
    ("palette", _img("P"), b"palette image", "ok", ""),
    ("la", _img("LA"), b"la image", "ok", ""),
    ("i16", _img("I;16"), b"sixteen bit", "ok", ""),
    ("rgba", _img("RGBA", color=(0, 0, 255, 128)), b"rgba image", "ok", ""),
    ("small", _jpeg((40, 40)), b"too small", "filtered", "too_small"),
    ("wide", _jpeg((400, 80)), b"too wide", "filtered", "aspect_ratio"),
    ("empty_cap", _jpeg(), b"   \n ", "rejected", "empty_caption"),
    ("bad_utf8", _jpeg(), b"caf\xe9 \xff\xfe", "rejected", "bad_utf8"),
    ("long_cap", _jpeg(), (" word" * 80).encode(), "ok", ""),
    ("spaces", _jpeg(), b"  A   photo\tof  a   Dog!!  ", "ok", ""),
    ("no_caption", _jpeg(), None, "rejected", "missing_caption"),
    ("no_image", None, b"orphan caption", "rejected", "missing_image"),
    ("good2", _jpeg(), b"another good one", "ok", ""),
]


def _write_tar(path, records):
    with tarfile.open(path, "w") as tar:
        for key, image, caption, *_ in records:
            for ext, data in (("jpg", image), ("txt", caption)):
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _read_dir(uri, sub, cfg=None):
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(u, cfg)))
              for u in storage.glob(storage.join(uri, sub, "*.parquet"), cfg)]
    return [r for t in tables for r in t.to_pylist()]


def test_every_bad_input_is_counted_under_its_reason(tmp_path, ray_local):
    from dataprep.config import DataprepConfig
    from dataprep.run import run
    from pipeline.config import merge

    _write_tar(tmp_path / "00000.tar", BAD_CORPUS)
    cfg = merge(DataprepConfig, {"input": str(tmp_path), "output": str(tmp_path / "out"),
                                 "validate": {"min_size": 64, "resize_shorter_side": 64}})
    s = run(cfg)
    assert s["read"] == len(BAD_CORPUS) == s["kept"] + s["filtered"] + s["rejected"]
    want_rej = {}
    for _, _, _, status, reason in BAD_CORPUS:
        if status == "rejected":
            want_rej[reason] = want_rej.get(reason, 0) + 1
    assert s["rejected_by_reason"] == want_rej
    assert s["filtered_by_reason"] == {"too_small": 1, "aspect_ratio": 1}
    saved = json.loads(storage.read_text(str(tmp_path / "out" / "_summary.json")))
    assert saved["rejected_by_reason"] == want_rej
    kept = {r["key"]: r for r in _read_dir(str(tmp_path / "out"), "data")}
    assert set(kept) == {k for k, *_, st, _ in BAD_CORPUS if st == "ok"}
    for r in kept.values():
        im = Image.open(io.BytesIO(r["jpg"]))
        assert im.mode == "RGB" and im.format == "JPEG" and min(im.size) == 64 == min(r["width"], r["height"])
    assert kept["spaces"]["web_caption"] == "a photo of a dog"
    assert len(kept["long_cap"]["web_caption"].split()) == 50
    assert kept["good1"]["kept_captions"] == ["a red square"]
    rejects = {r["key"]: r for r in _read_dir(str(tmp_path / "out"), "rejects")}
    for key, _, _, status, reason in BAD_CORPUS:
        if status != "ok":
            assert rejects[key]["reason"] == reason and rejects[key]["status"] == status
            assert rejects[key]["source_shard"].endswith("00000.tar")
    assert storage.exists(str(tmp_path / "out" / "config.yaml"))


def test_s3_in_and_out_with_endpoint_from_config(s3_bucket):
    """The job as users run it: its own process and local Ray, S3 in and out, the endpoint from the config."""
    root, scfg = s3_bucket
    generate(SyntheticConfig(num_samples=40, samples_per_shard=20, format="parquet", image_size=64), f"{root}/raw", scfg)
    env = child_env("AWS_ENDPOINT_URL")  # the endpoint comes from the config alone
    run_ok([sys.executable, os.path.join(ROOT, "jobs", "dataprep.py"), f"input={root}/raw/*.parquet",
            f"output={root}/prepped", "source.caption_column=caption", "source.image_column=jpg",
            f"storage.endpoint_url={scfg.endpoint_url}", "storage.region=us-east-1", "validate.min_size=32"],
           env=env, cwd=ROOT, timeout=300)
    s = json.loads(storage.read_text(f"{root}/prepped/_summary.json", scfg))
    assert s["read"] == 40 == s["kept"]
    keys = sorted(r["key"] for r in _read_dir(f"{root}/prepped", "data", scfg))
    assert keys == [f"0{i:09d}" for i in range(40)]
    assert [u.rsplit("/", 1)[-1] for u in storage.glob(f"{root}/prepped/data/*.parquet", scfg)] == ["00000.parquet",
                                                                                              "00001.parquet"]


def _descendants(pid):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_kill_and_rerun_finishes_without_duplicates(tmp_path):
    generate(SyntheticConfig(num_samples=1200, samples_per_shard=50, image_size=224), str(tmp_path / "raw"))
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "dataprep.py"), f"input={tmp_path / 'raw'}",
           "validate.min_size=32", "validate.batch_size=16", "progress_interval_s=1"]
    env = child_env()
    run_ok(cmd + [f"output={tmp_path / 'ref'}"], env=env, cwd=ROOT)

    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [f"output={out}"], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "_progress").glob("*.json"))) < 3 if (out / "_progress").exists() \
            else time.time() < deadline:
        time.sleep(0.2)
    done_before = len(list((out / "_progress").glob("*.json")))
    kids = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole driver process group, as a crash would
    for k in kids:
        try:
            k.kill()
        except Exception:
            pass
    proc.wait()
    assert 0 < done_before < 24, done_before
    marker_mtimes = {p.name: p.stat().st_mtime for p in (out / "_progress").glob("*.json")}
    r = run_ok(cmd + [f"output={out}"], env=env, cwd=ROOT)
    assert f"{len(marker_mtimes)} already done" in r.stdout
    for name, mtime in marker_mtimes.items():  # finished shards were not redone
        assert (out / "_progress" / name).stat().st_mtime == mtime
    ref_keys = [x["key"] for x in _read_dir(str(tmp_path / "ref"), "data")]
    keys = [x["key"] for x in _read_dir(str(out), "data")]
    assert len(keys) == len(set(keys)) == 1200 and sorted(keys) == sorted(ref_keys)
    s = json.loads((out / "_summary.json").read_text())
    assert s["read"] == 1200 == s["kept"] + s["filtered"] + s["rejected"]
