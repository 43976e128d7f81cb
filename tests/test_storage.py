import dataclasses
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from tests.s3_proxy import CuttableProxy


def test_s3_write_list_read_glob(s3_bucket):
    root, cfg = s3_bucket
    storage.write_text(f"{root}/a/x.txt", "hello", cfg)
    storage.write_bytes(f"{root}/a/b/y.bin", b"\x00\x01", cfg)
    storage.write_text(f"{root}/c.txt", "c", cfg)
    assert storage.read_text(f"{root}/a/x.txt", cfg) == "hello"
    assert storage.read_bytes(f"{root}/a/b/y.bin", cfg) == b"\x00\x01"
    assert storage.listdir(f"{root}/a", cfg) == [f"{root}/a/b", f"{root}/a/x.txt"]
    assert storage.glob(f"{root}/**/*.txt", cfg) == [f"{root}/a/x.txt", f"{root}/c.txt"]
    assert storage.exists(f"{root}/c.txt", cfg) and not storage.exists(f"{root}/nope", cfg)
    storage.remove(f"{root}/a", cfg=cfg)
    assert storage.listdir(f"{root}/a", cfg) == []


def test_pyarrow_filesystem_on_s3(s3_bucket):
    root, cfg = s3_bucket
    fs, path = storage.pyarrow_filesystem(f"{root}/t.parquet", cfg)
    pq.write_table(pa.table({"x": [1, 2, 3]}), path, filesystem=fs)
    # read back through the fsspec side: both views agree
    with storage.open_file(f"{root}/t.parquet", "rb", cfg) as f:
        assert pq.read_table(f).column("x").to_pylist() == [1, 2, 3]


def test_local_and_file_uri(tmp_path):
    storage.write_text(f"file://{tmp_path}/d/e.txt", "x")
    assert storage.read_text(str(tmp_path / "d" / "e.txt")) == "x"
    assert storage.glob(f"{tmp_path}/d/*.txt") == [str(tmp_path / "d" / "e.txt")]
    # atomic local writes leave no temp files behind
    assert storage.listdir(str(tmp_path / "d")) == [str(tmp_path / "d" / "e.txt")]


def test_directory_round_trip_through_s3(s3_bucket, tmp_path):
    root, cfg = s3_bucket
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    storage.upload_dir(str(src), f"{root}/model", cfg)
    dst = storage.local_copy(f"{root}/model", str(tmp_path / "dst"), cfg)
    assert (tmp_path / "dst" / "sub" / "b.txt").read_text() == "b" and dst == str(tmp_path / "dst")


@pytest.fixture
def cut_bucket(s3_bucket):
    """(s3://bucket, StorageConfig through a cuttable proxy with fast retries, the proxy)."""
    root, cfg = s3_bucket
    proxy = CuttableProxy(cfg.endpoint_url).start()
    fast = dataclasses.replace(cfg, endpoint_url=proxy.endpoint, retry_attempts=4, retry_backoff_s=0.5)
    yield root, fast, proxy
    proxy.close()


def test_transient_outage_is_retried_until_storage_is_back(cut_bucket, capfd):
    root, cfg, proxy = cut_bucket
    proxy.cut_on("/x.bin", restore_after=1.0)  # the server goes away as the PUT arrives, back 1 s later
    t0 = time.time()
    storage.write_bytes(f"{root}/x.bin", b"payload", cfg)
    assert proxy.cut_count == 1 and time.time() - t0 >= 1.0
    assert storage.read_bytes(f"{root}/x.bin", cfg) == b"payload"
    err = capfd.readouterr().err
    assert f"[storage] write {root}/x.bin failed (attempt 1/4" in err and "retrying in" in err
    assert "testing" not in err  # the (moto) credentials never reach the log


def test_outage_longer_than_the_retries_fails_naming_the_uri(cut_bucket, capfd):
    root, cfg, proxy = cut_bucket
    proxy.cut()
    t0 = time.time()
    with pytest.raises(storage.StorageError, match=rf"write {root}/y.bin failed after 4 attempt\(s\)"):
        storage.write_bytes(f"{root}/y.bin", b"y", cfg)
    # waits of 0.5, 1 and 2 s (times a 0.8-1.0 jitter) between the 4 tries
    assert 0.8 * 3.5 <= time.time() - t0 < 3.5 + 5
    assert capfd.readouterr().err.count("retrying in") == 3
    proxy.restore()
    assert not storage.exists(f"{root}/y.bin", cfg)


def test_permanent_errors_are_not_retried(cut_bucket, capfd):
    root, cfg, _ = cut_bucket
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{root}/missing", cfg)
    assert "retrying" not in capfd.readouterr().err


def test_upload_cut_midway_resumes_file_by_file(cut_bucket, tmp_path):
    root, cfg, proxy = cut_bucket
    for i in range(4):
        (tmp_path / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    proxy.cut_on("/up/f2.bin", restore_after=1.0)  # f0 and f1 are in, f2 is on the wire
    storage.upload_dir(str(tmp_path), f"{root}/up", cfg)
    assert proxy.cut_count == 1
    assert [r.split("/")[-1] for r in proxy.requests if r.startswith("PUT")] == ["f0.bin", "f1.bin", "f2.bin",
                                                                               "f2.bin", "f3.bin"]
    for i in range(4):
        assert storage.read_bytes(f"{root}/up/f{i}.bin", cfg) == bytes([i]) * 1000
