import numpy as np
import pytest

from demo.metrics import attribute_accuracy
from pipeline.evaluate import (
    caption_scores,
    normalize_answer,
    recall_at_k,
    rerank,
    retrieval_metrics,
    vqa_accuracy,
)


def test_recall_at_k_by_hand():
    # 3 images, 4 texts; text 3 also belongs to image 0
    s = np.array([[0.9, 0.1, 0.2, 0.3],
                  [0.2, 0.1, 0.8, 0.0],   # image 1's text (1) ranks 3rd
                  [0.1, 0.0, 0.7, 0.1]])  # image 2's text (2) ranks 1st
    text_image = np.array([0, 1, 2, 0])
    r = recall_at_k(s, text_image, ks=(1, 2, 3))
    assert r["tr1"] == pytest.approx(2 / 3) and r["tr3"] == 1.0
    # texts: t0 -> img0 rank0, t1 -> img1 rank0 (tie 0.1 vs 0.1 broken by index: img0 first) -> rank 1,
    # t2 -> img2 rank1, t3 -> img0 rank0
    assert r["ir1"] == pytest.approx(2 / 4) and r["ir2"] == 1.0


def test_rerank_uses_itm_within_top_k():
    itc = np.array([[0.5, 0.4], [0.45, 0.5]])
    # ITM prefers the off-diagonal for image 0 strongly
    def itm(imgs, txts):
        return np.array([5.0 if (i, t) == (0, 1) else 0.0 for i, t in zip(imgs, txts)])

    i2t, t2i = rerank(itc, itm, k=2)
    assert np.argmax(i2t[0]) == 1 and np.argmax(t2i[:, 1]) == 0
    i2t1, _ = rerank(itc, itm, k=1)  # with k=1 only the ITC top-1 is a candidate
    assert np.argmax(i2t1[0]) == 0 and np.isneginf(i2t1[0, 1])
    m = retrieval_metrics(*rerank(itc, lambda i, t: np.zeros(len(i)), 2), np.array([0, 1]), ks=(1,))
    assert m == {"tr1": 1.0, "ir1": 1.0}


def test_vqa_normalisation_and_accuracy():
    assert normalize_answer("Two.") == "2" and normalize_answer("the Red one!") == "red 1"
    assert vqa_accuracy(["Red", "a circle", "three", "blue"], [["red"], ["circle"], ["3"], ["green"]]) == 0.75


def test_cider_matches_pycocoevalcap_known_example():
    gts = {"1": ["a red circle on the left", "a red disc"], "2": ["a blue square"]}
    res = {"1": "A red circle.", "2": "a green square"}
    s = caption_scores(gts, res)
    # pycocoevalcap's Cider on the tokenised captions (value computed with pycocoevalcap 1.2)
    assert s["cider"] == pytest.approx(2.2234553421, abs=1e-6)
    assert s["bleu4"] == pytest.approx(0.0213643503, abs=1e-6)
    perfect = caption_scores(gts, {"1": "a red circle on the left", "2": "a blue square"})
    assert perfect["cider"] > s["cider"] and perfect["bleu4"] > s["bleu4"]


def test_attribute_accuracy():
    objs = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}]
    assert attribute_accuracy(["a red disc", "a blue circle"], objs) == 0.5
    assert attribute_accuracy(["a red circle", "a big blue box"], objs) == 1.0


@pytest.mark.slow
def test_evaluate_job_on_exported_models(tiny_zoo, tmp_path):
    import json

    import ray

    from demo.synthetic import SyntheticConfig, generate
    from demo.tiny_zoo import tiny_stage1, tiny_stage2
    from jobs import evaluate as job
    from pipeline.models.export import export_stage1, export_stage2
    from pipeline.models.stage1 import Blip2Stage1
    from pipeline.models.stage2 import Blip2Stage2

    generate(SyntheticConfig(num_samples=0, num_test=24, samples_per_shard=24, image_size=32), str(tmp_path / "d"))
    export_stage1(Blip2Stage1(tiny_stage1(tiny_zoo)).eval(), str(tmp_path / "ret"))
    export_stage2(Blip2Stage2(tiny_stage2(tiny_zoo)).eval(), str(tmp_path / "cap"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = job.main([f"data={tmp_path / 'd' / 'test'}", f"retrieval_model={tmp_path / 'ret'}",
                      f"caption_model={tmp_path / 'cap'}", f"output={tmp_path / 'r.json'}", "k_test=8",
                      "num_beams=2", "max_new_tokens=5", "vqa_max_new_tokens=3"])
    finally:
        ray.shutdown()
    saved = json.load(open(tmp_path / "r.json"))
    for k in ("retrieval_tr1", "retrieval_ir1", "retrieval_tr10", "retrieval_chance_r1", "caption_cider",
              "caption_bleu4", "vqa_accuracy"):
        assert k in saved and 0.0 <= saved[k] <= 10.0, k
    assert saved["num_samples"] == 24 and saved["retrieval_chance_r1"] == pytest.approx(1 / 24)
    assert r["retrieval_tr10"] >= r["retrieval_tr1"]
