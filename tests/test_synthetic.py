import hashlib
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from demo.synthetic import COLOURS, SHAPES, SyntheticConfig, generate
from pipeline import storage


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _samples(tar_path):
    out = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.rsplit(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_same_seed_gives_byte_identical_shards(tmp_path):
    cfg = SyntheticConfig(num_samples=60, samples_per_shard=25, noise_fraction=0.3, workers=2, image_size=64)
    generate(cfg, str(tmp_path / "a"))
    cfg1 = SyntheticConfig(num_samples=60, samples_per_shard=25, noise_fraction=0.3, workers=1, image_size=64)
    generate(cfg1, str(tmp_path / "b"))
    names = ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(p.split("/")[-1] for p in storage.glob(str(tmp_path / "a" / "*.tar"))) == names
    for n in names:
        assert _digest(tmp_path / "a" / n) == _digest(tmp_path / "b" / n)
    generate(SyntheticConfig(num_samples=60, samples_per_shard=25, seed=1, image_size=64), str(tmp_path / "c"))
    assert _digest(tmp_path / "a" / names[0]) != _digest(tmp_path / "c" / names[0])


def test_schema_and_noise_flags(tmp_path):
    cfg = SyntheticConfig(num_samples=400, samples_per_shard=400, noise_fraction=0.3, image_size=64)
    generate(cfg, str(tmp_path))
    samples = _samples(tmp_path / "00000.tar")
    assert len(samples) == 400
    noisy = 0
    for key, s in samples.items():
        assert set(s) == {"jpg", "txt", "json"}
        meta = json.loads(s["json"])
        assert meta["key"] == key and meta["caption"] == s["txt"].decode()
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.size == (64, 64) and img.mode == "RGB"
        main = meta["objects"][0]
        assert main["shape"] in SHAPES and main["colour"] in COLOURS and 1 <= len(meta["objects"]) <= 3
        assert {q["question"] for q in meta["qa"]} and meta["qa"][0]["answer"] == main["colour"]
        if meta["noisy"]:
            noisy += 1
            assert meta["caption"] != meta["clean_caption"] and meta["noise_kind"] in {"swap", "garbled"}
            if meta["noise_kind"] == "swap":  # another scene's caption never names this main object
                assert f"{main['colour']} {main['shape']}" not in meta["caption"].split(" and ")[0]
        else:
            assert meta["caption"] == meta["clean_caption"] and main["colour"] in meta["caption"]
    assert 0.22 < noisy / 400 < 0.38


def test_heldout_combinations_never_in_training(tmp_path):
    cfg = SyntheticConfig(num_samples=500, samples_per_shard=500, num_test=100, num_compositional=100,
                          image_size=32)
    uris = generate(cfg, str(tmp_path))
    held = {tuple(c.split()) for c in cfg.heldout_combos}

    def combos(tar):
        return [[(o["colour"], o["shape"]) for o in json.loads(s["json"])["objects"]]
                for s in _samples(tar).values()]

    train = combos(tmp_path / "00000.tar")
    assert all(c not in held for objs in train for c in objs)
    test = combos(tmp_path / "test" / "00000.tar")
    assert all(c not in held for objs in test for c in objs)
    comp = combos(tmp_path / "compositional" / "00000.tar")
    assert all(objs[0] in held for objs in comp)
    keys = [set(_samples(tmp_path / d / "00000.tar")) for d in ("", "test", "compositional")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2])
    assert set(uris) == {"train", "test", "compositional"}


def test_parquet_to_s3(s3_bucket):
    root, cfg = s3_bucket
    generate(SyntheticConfig(num_samples=20, samples_per_shard=10, format="parquet", image_size=32),
             f"{root}/syn", cfg)
    files = storage.glob(f"{root}/syn/*.parquet", cfg)
    assert [f.split("/")[-1] for f in files] == ["00000.parquet", "00001.parquet"]
    with storage.open_file(files[0], "rb", cfg) as f:
        t = pq.read_table(f)
    assert t.column_names == ["key", "jpg", "caption", "json"] and t.num_rows == 10


@pytest.mark.slow
def test_ray_reads_webdataset_shards(tmp_path):
    import ray

    generate(SyntheticConfig(num_samples=30, samples_per_shard=10, image_size=32), str(tmp_path))
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        rows = ray.data.read_webdataset(str(tmp_path), decoder=None).take_all()
    finally:
        ray.shutdown()
    assert len(rows) == 30
    assert sorted(r["__key__"] for r in rows) == [f"0{i:09d}" for i in range(30)]
    assert all(isinstance(r["jpg"], bytes) and r["txt"] for r in rows)
