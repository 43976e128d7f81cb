import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage


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
