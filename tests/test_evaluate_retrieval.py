"""Retrieval: metrics equal LAVIS's ``_report_metrics`` (fixture computed with LAVIS's code on 5-caption sets), and
the Ray Data pipeline re-ranks on cached image embeddings: one ViT pass per image, k_test x (images + texts) ITM
text passes, the same scores as re-running the ViT per pair."""

import json
import os

import numpy as np
import pytest

from pipeline.evaluation.retrieval import itc_similarity, report_metrics, rerank, top_k_pairs

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "evaluation", "retrieval_lavis.json")
LAVIS_KEYS = {"tr1": "txt_r1", "tr5": "txt_r5", "tr10": "txt_r10", "tr_mean": "txt_r_mean", "ir1": "img_r1",
              "ir5": "img_r5", "ir10": "img_r10", "ir_mean": "img_r_mean", "r_mean": "r_mean"}


def test_report_metrics_equal_lavis_on_five_caption_sets():
    cases = json.load(open(FIXTURE))["cases"]
    assert len(cases) == 4
    for c in cases:
        i2t, t2i = np.array(c["scores_i2t"]), np.array(c["scores_t2i"])
        got = report_metrics(i2t, t2i, c["txt2img"], c["img2txt"])
        for ours, theirs in LAVIS_KEYS.items():
            assert got[ours] == pytest.approx(c["lavis"][theirs], abs=1e-9), (ours, c["lavis"])
        # -inf instead of LAVIS's -100 outside the candidates ranks the same
        got_inf = report_metrics(np.where(i2t == -100, -np.inf, i2t), np.where(t2i == -100, -np.inf, t2i),
                                 c["txt2img"], c["img2txt"])
        assert got_inf == got


def test_top_k_and_rerank_by_hand():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])  # 2 images, 3 texts
    i2t, t2i = top_k_pairs(sim, 2)
    assert i2t.tolist() == [[0, 0], [0, 2], [1, 1], [1, 2]]
    assert t2i.tolist() == [[0, 0], [1, 0], [1, 1], [0, 1], [0, 2], [1, 2]]
    itm = {(0, 2): 5.0}  # ITM strongly prefers text 2 for image 0
    s_i2t, s_t2i = rerank(sim, i2t, np.array([itm.get(tuple(p), 0.0) for p in i2t.tolist()]), t2i,
                          np.array([itm.get(tuple(p), 0.0) for p in t2i.tolist()]))
    assert np.argmax(s_i2t[0]) == 2 and np.isneginf(s_i2t[0, 1]) and s_t2i.shape == (3, 2)
    assert s_i2t[0, 2] == pytest.approx(5.5) and s_t2i[2, 0] == pytest.approx(5.5)
    feats = np.random.default_rng(0).normal(size=(3, 4, 8))
    txt = np.random.default_rng(1).normal(size=(5, 8))
    assert np.allclose(itc_similarity(feats, txt, chunk=2), np.einsum("iqe,te->itq", feats, txt).max(-1), atol=1e-5)


@pytest.fixture(scope="module")
def stage1_folder(tiny_zoo, tmp_path_factory):
    import torch

    from demo.tiny_zoo import tiny_stage1
    from pipeline.models.export import export_stage1
    from pipeline.models.stage1 import Blip2Stage1

    torch.manual_seed(0)
    return export_stage1(Blip2Stage1(tiny_stage1(tiny_zoo)).eval(), str(tmp_path_factory.mktemp("ret")))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _naive_scores(model_uri, ev, texts, k):
    """LAVIS's computation done the slow way in this process: the ViT re-run for every re-ranked pair."""
    import torch

    from pipeline.evaluation.image_source import ImageSource
    from pipeline.evaluation.models import load_model
    from pipeline.images import to_pixel_values

    m = load_model(model_uri, 1)
    pix = to_pixel_values(ImageSource(ev.image_root).load(ev.images), m.vision.image_size)
    tok = m.tokenizer(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        _, feats = m.image_features(pix)
        sim = itc_similarity(feats.numpy(), m.text_features(tok.input_ids, tok.attention_mask).numpy())
        i2t, t2i = top_k_pairs(sim, k)

        def itm(pairs):
            return np.array([m.itm_logits(tok.input_ids[[t]], tok.attention_mask[[t]], m.vision(pix[[i]]))[0, 1].item()
                             for i, t in pairs])

        return rerank(sim, i2t, itm(i2t), t2i, itm(t2i))


@pytest.mark.slow
def test_ray_retrieval_caches_image_embeddings_and_counts_the_cost(stage1_folder, local_ray, tmp_path):
    from pipeline.config import merge
    from pipeline.evaluation import annotations as A
    from pipeline.evaluation.image_source import ImageSource
    from pipeline.evaluation.run import EvalConfig, evaluate_retrieval
    from pipeline.evaluation.text import pre_caption
    from tests.evaluation_fixtures import write_benchmarks

    paths = write_benchmarks(str(tmp_path / "b"), n=8)
    k = 4
    # images from a Parquet file: the actors index it themselves
    cfg = merge(EvalConfig, {"data": paths["flickr"], "images": paths["flickr_parquet"], "retrieval_model": stage1_folder,
                             "retrieval": {"k_test": k}, "inference": {"batch_size": 3, "pair_batch_size": 16,
                                                                       "actors": 2, "num_cpus": 0.5}})
    ev = A.read("karpathy", paths["flickr"], images=paths["flickr_parquet"])
    r = evaluate_retrieval(cfg, ev, ImageSource(ev.image_root))
    n_img, n_txt = 8, 40
    cost = r["retrieval_cost"]
    assert cost["vit_images"] == n_img  # exactly one ViT pass per image, all of them in the embedding pass
    assert cost["vit_images_in_reranking"] == 0
    assert cost["itm_text_passes"] == k * (n_img + n_txt) == cost["itm_pairs_i2t"] + cost["itm_pairs_t2i"]
    texts, txt2img, img2txt = ev.retrieval_texts()
    want = report_metrics(*_naive_scores(stage1_folder, ev, [pre_caption(t) for t in texts], k), txt2img, img2txt)
    for key, v in want.items():
        assert r[f"retrieval_{key}"] == pytest.approx(v, abs=1e-9), key
    assert r["retrieval_chance_r1"] == pytest.approx(100 / 8)
