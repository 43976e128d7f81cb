"""End to end: jobs/evaluate.py on tiny fixtures in each official layout, through Ray Data, with exported
folders, a "released" folder (no blip2-ray extras) and training checkpoints."""

import json
import os

import pytest


@pytest.fixture(scope="module")
def models(tiny_zoo, tmp_path_factory):
    import torch

    from demo.tiny_zoo import tiny_stage1, tiny_stage2
    from pipeline.checkpoint import save_model
    from pipeline.models.export import EXTRAS, export_stage1, export_stage2
    from pipeline.models.stage1 import Blip2Stage1
    from pipeline.models.stage2 import Blip2Stage2

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    s1 = Blip2Stage1(tiny_stage1(tiny_zoo)).eval()
    released = export_stage1(s1, str(d / "released_itm"))
    os.remove(os.path.join(released, EXTRAS))  # what a released Blip2ForImageTextRetrieval folder looks like
    save_model(s1, "stage1", str(d / "ckpt1"))
    opt = Blip2Stage2(tiny_stage2(tiny_zoo, "opt")).eval()
    save_model(opt, "stage2", str(d / "ckpt2"))
    return {"released_itm": released, "ckpt1": str(d / "ckpt1"), "ckpt2": str(d / "ckpt2"),
            "opt": export_stage2(opt, str(d / "opt")),
            "t5": export_stage2(Blip2Stage2(tiny_stage2(tiny_zoo, "t5")).eval(), str(d / "t5"))}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from tests.evaluation_fixtures import write_benchmarks

    return write_benchmarks(str(tmp_path_factory.mktemp("bench")))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


FAST = ["inference.num_cpus=0.5", "caption.num_beams=2", "caption.max_new_tokens=5", "caption.min_new_tokens=1",
        "vqa.num_beams=2", "vqa.max_new_tokens=3"]


def _run(tmp_path, name, *args):
    from jobs import evaluate as job

    out = str(tmp_path / f"{name}.json")
    r = job.main([*args, *FAST, f"output={out}"])
    assert json.load(open(out))["tasks"] == r["tasks"]
    return r


@pytest.mark.slow
def test_coco_karpathy_retrieval_and_captioning(models, bench, local_ray, tmp_path, capsys):
    r = _run(tmp_path, "coco", f"data={bench['coco_karpathy']}", f"images={bench['coco_images']}",
             f"retrieval_model={models['released_itm']}", f"caption_model={models['opt']}", "retrieval.k_test=4",
             "caption.metrics=[bleu,cider]")
    assert r["format"] == "karpathy" and r["benchmark"] == "coco" and r["tasks"] == ["retrieval", "captioning"]
    assert r["retrieval_images"] == 6 and r["retrieval_texts"] == 30
    assert r["retrieval_cost"]["vit_images"] == 6 and r["retrieval_cost"]["itm_text_passes"] == 4 * 36
    for k in ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10"):
        assert 0.0 <= r[f"retrieval_{k}"] <= 100.0
    assert r["retrieval_tr10"] >= r["retrieval_tr5"] >= r["retrieval_tr1"]
    assert r["retrieval_ir10"] == 100.0  # 6 images: every text's image is in its top 10
    assert {e["key"] for e in r["examples"]} <= set(r["caption_generated"])
    assert len(r["caption_generated"]) == 6 and r["caption_cider"] >= 0.0 and "caption_meteor" not in r
    printed = capsys.readouterr().out
    assert "paper BLIP-2 ViT-g" in printed and "85.4" in printed and "145.8" in printed


@pytest.mark.slow
def test_vqav2_every_question_scored_officially(models, bench, local_ray, tmp_path):
    r = _run(tmp_path, "vqa", f"data={bench['vqav2_annotations']}", f"questions={bench['vqav2_questions']}",
             f"images={bench['coco_val2014']}", f"caption_model={models['ckpt2']}")
    assert r["tasks"] == ["vqa"] and r["vqa_questions"] == 18 and len(r["vqa_answers"]) == 18
    assert r["vqa_prompt"] == "Question: {} Answer:" and r["vqa_scoring"] == "vqa"
    from pipeline.evaluation.annotations import read
    from pipeline.evaluation.vqa import vqa_accuracy

    ev = read("vqav2", bench["vqav2_annotations"], bench["vqav2_questions"])
    want = vqa_accuracy([r["vqa_answers"][q.question_id] for q in ev.questions], [q.answers for q in ev.questions])
    assert r["vqa_accuracy"] == pytest.approx(want, abs=1e-12)


@pytest.mark.slow
def test_gqa_with_flan_t5_prompt_and_nocaps_domains(models, bench, local_ray, tmp_path):
    g = _run(tmp_path, "gqa", f"data={bench['gqa']}", f"images={bench['gqa_images']}", f"caption_model={models['t5']}")
    assert g["benchmark"] == "gqa" and g["vqa_prompt"] == "Question: {} Short answer:" and g["vqa_scoring"] == "exact"
    assert g["vqa_questions"] == 6 and 0.0 <= g["vqa_accuracy"] <= 100.0
    n = _run(tmp_path, "nocaps", f"data={bench['nocaps']}", f"caption_model={models['opt']}", "caption.prompt=",
             "caption.metrics=[cider]")
    assert n["benchmark"] == "nocaps"
    for d in ("in_domain", "near_domain", "out_domain"):
        assert f"caption_{d}_cider" in n


@pytest.mark.slow
def test_data_prep_shards_with_checkpoints(models, tmp_path, local_ray):
    from demo.synthetic import SyntheticConfig, generate

    uris = generate(SyntheticConfig(num_samples=0, num_test=10, samples_per_shard=10, image_size=32),
                    str(tmp_path / "d"))
    from pipeline.config import load_config
    from pipeline.evaluation.run import EvalConfig, evaluate

    cfg = load_config(EvalConfig, [f"data={uris['test']}", f"retrieval_model={models['ckpt1']}",
                                   f"caption_model={models['ckpt2']}", "retrieval.k_test=3", "caption.prompt=",
                                   "caption.metrics=[bleu,cider]", *FAST])
    # a metric only the caller knows (the demo passes its attribute accuracy this way)
    r = evaluate(cfg, extra_caption_metrics={"mean_words": lambda gen: sum(len(c.split()) for c in gen.values()) / len(gen)})
    assert r["format"] == "shards" and r["tasks"] == ["retrieval", "captioning", "vqa"]
    assert r["caption_mean_words"] == sum(len(c.split()) for c in r["caption_generated"].values()) / 10
    assert r["retrieval_images"] == 10 and r["vqa_scoring"] == "exact" and r["vqa_questions"] >= 10
    assert isinstance(r["caption_cider"], float) and len(r["caption_generated"]) == 10


def test_wrong_model_kind_is_named(models):
    from pipeline.evaluation.models import load_model

    with pytest.raises(ValueError, match="stage2 checkpoint .Blip2ForConditionalGeneration.; retrieval"):
        load_model(models["ckpt2"], 1)
    with pytest.raises(ValueError, match="Blip2ForConditionalGeneration folder"):
        load_model(models["released_itm"], 2)
    assert load_model(models["released_itm"], 1).itm_head.weight.shape[0] == 2


def test_config_errors_name_the_key(bench):
    from pipeline.config import merge
    from pipeline.evaluation.run import EvalConfig, evaluate

    with pytest.raises(ValueError, match="needs caption_model="):
        evaluate(merge(EvalConfig, {"data": bench["gqa"], "tasks": ["vqa"], "retrieval_model": "x"}))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(merge(EvalConfig, {"data": bench["gqa"], "retrieval_model": "x"}))


def test_demo_attribute_accuracy():
    from demo.metrics import attribute_accuracy

    objs = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}]
    assert attribute_accuracy(["a red disc", "a blue circle"], objs) == 0.5
    assert attribute_accuracy(["a red circle", "a big blue box"], objs) == 1.0
