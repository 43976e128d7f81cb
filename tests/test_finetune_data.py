"""COCO Karpathy and VQAv2 annotation files -> data-prep training records, read back by the training decoder."""

import json

import pyarrow.parquet as pq

from dataprep.annotations import clean_question, convert_coco_karpathy, convert_vqav2
from demo.synthetic import SyntheticConfig, make_sample
from pipeline.data import DataConfig, Index, decode_samples, read_window
from pipeline.records import OUTPUT_SCHEMA


def _images(root, names):
    cfg = SyntheticConfig(image_size=48)
    for i, n in enumerate(names):
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(make_sample(cfg, "train", i)["jpg"])


def _decode_all(uri):
    """Every record in file order, through the training reader (one window over all row groups) and decoder."""
    index = Index.load(uri)
    pieces = []
    for f in range(len(index.paths)):
        row = 0  # a piece: file, row group, slice [a, b) of the group, the group's first row in the file
        for g, n in enumerate(index.groups(f)):
            pieces.append([f, g, 0, int(n), row])
            row += int(n)
    rows = read_window({"files": index.paths, "pieces": pieces})
    return decode_samples(rows["key"], rows["jpg"], rows["kept_captions"], 0, DataConfig(uri=uri, image_size=32),
                          seed=0, train=False, questions=rows["question"])


def test_coco_karpathy_both_layouts(tmp_path):
    names = ["val2014/COCO_val2014_000000000001.jpg", "train2014/COCO_train2014_000000000002.jpg"]
    _images(tmp_path / "img", names)
    lavis_train = [{"image": names[0], "caption": "A Dog, on the grass!", "image_id": "coco_1"},
                   {"image": names[0], "caption": "a brown dog", "image_id": "coco_1"},
                   {"image": names[1], "caption": "Two cats.", "image_id": "coco_2"}]
    lavis_test = [{"image": names[0], "caption": ["A dog.", "a brown dog"]}, {"image": names[1], "caption": ["cats"]}]
    karpathy = {"images": [{"filepath": "val2014", "filename": names[0].split("/")[1], "split": "train",
                            "sentences": [{"raw": "A Dog, on the grass!"}, {"raw": "a brown dog"}]},
                           {"filepath": "train2014", "filename": names[1].split("/")[1], "split": "train",
                            "sentences": [{"raw": "Two cats."}]}]}
    for name, ann in (("train", lavis_train), ("test", lavis_test), ("karpathy", karpathy)):
        (tmp_path / f"{name}.json").write_text(json.dumps(ann))
        out = str(tmp_path / f"out_{name}")
        assert convert_coco_karpathy(str(tmp_path / f"{name}.json"), str(tmp_path / "img"), out, shard_size=1) == 2
        t = pq.read_table(f"{out}/data/00000.parquet")
        assert t.schema.equals(OUTPUT_SCHEMA)
        kept = pq.read_table(f"{out}/data/00000.parquet").column("kept_captions").to_pylist()[0]
        if name == "test":
            assert kept == ["a dog", "a brown dog"]
        else:
            assert kept == ["a dog, on the grass", "a brown dog"]  # LAVIS blip_caption cleaning
        got = _decode_all(out)
        assert got["pixel_values"].shape == (2, 3, 32, 32)
        assert list(got["key"]) == ["COCO_val2014_000000000001", "COCO_train2014_000000000002"]
        assert got["caption"][1] == ("two cats" if name != "test" else "cats") and got["question"][0] == ""


def test_vqav2_questions_and_answers(tmp_path):
    _images(tmp_path / "img", ["train2014/COCO_train2014_000000000007.jpg"])
    q = {"data_subtype": "train2014", "questions": [
        {"image_id": 7, "question": "What color is the Square?", "question_id": 70},
        {"image_id": 7, "question": "How many objects are there?", "question_id": 71}]}
    a = {"annotations": [{"question_id": 70, "image_id": 7, "answers": [{"answer": "red"}] * 10},
                         {"question_id": 71, "image_id": 7, "answers": [{"answer": "2"}] * 7 + [{"answer": "two"}] * 3}]}
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "a.json").write_text(json.dumps(a))
    out = str(tmp_path / "vqa")
    assert convert_vqav2(str(tmp_path / "q.json"), str(tmp_path / "a.json"), str(tmp_path / "img"), out) == 2
    got = _decode_all(out)
    assert list(got["question"]) == ["what color is the square?", "how many objects are there?"]
    assert got["caption"][0] == "red" and got["caption"][1] in ("2", "two")
    assert list(got["key"]) == ["70", "71"]
    assert clean_question('Is it "big"?  ') == "is it big?"
