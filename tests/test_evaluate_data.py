"""Readers of the standard annotation files and the image sources, on tiny fixtures in each official layout."""

import pytest

from pipeline.evaluation import annotations as A
from pipeline.evaluation.image_source import ImageSource
from pipeline.evaluation.run import detect_format
from tests.evaluation_fixtures import write_benchmarks


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmarks(str(tmp_path_factory.mktemp("bench")))


def test_karpathy_layout_gives_five_captions_per_image_in_lavis_order(bench):
    ev = A.read("karpathy", bench["coco_karpathy"], images=bench["coco_images"])
    assert len(ev.images) == 6 and all(len(c) == 5 for c in ev.captions)
    texts, txt2img, img2txt = ev.retrieval_texts()
    assert len(texts) == 30 and txt2img[:6] == [0, 0, 0, 0, 0, 1] and img2txt[1] == [5, 6, 7, 8, 9]
    assert ImageSource(ev.image_root).load(ev.images[:2])[0][:2] == b"\xff\xd8"  # JPEG
    # Flickr: the folder beside the annotation file is the default image root
    fl = A.read("karpathy", bench["flickr"])
    assert ImageSource(fl.image_root).load(fl.images) == ImageSource(bench["flickr_parquet"]).load(fl.images)


def test_packed_sources_find_names_by_path_file_name_or_stem(bench):
    fl = A.read("karpathy", bench["flickr"])
    folder = ImageSource(fl.image_root).load(fl.images)
    assert ImageSource(bench["flickr_tar"]).load(fl.images) == folder
    assert ImageSource(bench["flickr_parquet"]).kind == "packed"
    with pytest.raises(KeyError, match="none of 1 packed files"):
        ImageSource(bench["flickr_tar"]).load(["flickr30k-images/404.jpg"])
    with pytest.raises(FileNotFoundError, match="set images="):
        ImageSource(fl.image_root).load(["nope.jpg"])


def test_nocaps_and_vqa_and_gqa(bench):
    nc = A.read("coco_captions", bench["nocaps"])
    assert len(nc.images) == 6 and all(len(c) == 10 for c in nc.captions)
    assert nc.domains[:3] == ["in-domain", "near-domain", "out-domain"]
    assert len(ImageSource(nc.image_root).load(nc.images)) == 6
    vqa = A.read("vqav2", bench["vqav2_annotations"], questions=bench["vqav2_questions"], images=bench["coco_val2014"])
    assert len(vqa.questions) == 18 and all(len(q.answers) == 10 for q in vqa.questions)
    assert vqa.questions[0].image == "COCO_val2014_000000391895.jpg" and vqa.answer_scoring == "vqa"
    assert len(ImageSource(vqa.image_root).load([q.image for q in vqa.questions])) == 18
    ok = A.read("okvqa", bench["okvqa_annotations"], questions=bench["okvqa_questions"], images=bench["coco_val2014"])
    assert len(ok.questions) == 6 and ok.questions[0].answers.count("paper") == 4
    gqa = A.read("gqa", bench["gqa"], images=bench["gqa_images"])
    assert len(gqa.questions) == 6 and gqa.answer_scoring == "exact" and gqa.questions[0].answers == ["red"]
    assert gqa.questions[0].image == "n161313.jpg"
    assert len(ImageSource(gqa.image_root).load([q.image for q in gqa.questions])) == 6


def test_format_detection_and_errors(bench, tmp_path):
    assert detect_format(bench["coco_karpathy"]) == "karpathy"
    assert detect_format(bench["nocaps"]) == "coco_captions"
    assert detect_format(bench["vqav2_annotations"]) == "vqav2"
    assert detect_format(bench["gqa"]) == "gqa"
    with pytest.raises(ValueError, match="needs questions="):
        A.read("vqav2", bench["vqav2_annotations"])
    with pytest.raises(ValueError, match="lacks \\['caption'\\]"):
        bad = tmp_path / "bad.json"
        bad.write_text('[{"image": "x.jpg"}]')
        A.read("karpathy", str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.read("karpathy", str(tmp_path / "missing.json"))
    lim = A.limit(A.read("vqav2", bench["vqav2_annotations"], questions=bench["vqav2_questions"]), 2)
    assert len(lim.images) == 2 and len(lim.questions) == 6


@pytest.mark.slow
def test_annotations_from_s3(bench, s3_bucket, monkeypatch):
    from pipeline import storage

    bucket, scfg = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", scfg.endpoint_url)  # set_default exports it; restored after the test
    storage.set_default(scfg)
    try:
        storage.upload_dir(bench["coco_karpathy"].rsplit("/", 2)[0], f"{bucket}/coco", scfg)
        ev = A.read("karpathy", f"{bucket}/coco/annotations/coco_karpathy_test.json", images=f"{bucket}/coco/images")
        assert len(ev.images) == 6
        assert ImageSource(ev.image_root).load(ev.images[:1])[0][:2] == b"\xff\xd8"
    finally:
        storage.set_default(type(scfg)())
