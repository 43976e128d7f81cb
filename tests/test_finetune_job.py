"""jobs/finetune.py end to end on CPU for each recipe: 2 Ray Train workers, ZeRO-2, checkpoints on moto S3, resume,
export through jobs/export.py, reload in transformers, and the same generations / scores as before export."""

import json
import os

import pytest
import torch
from safetensors.torch import load as load_st
from transformers import (
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    InstructBlipForConditionalGeneration,
)

from demo.synthetic import SyntheticConfig, make_sample
from demo.tiny_zoo import TINY_QFORMER, tiny_stage1, tiny_stage2
from jobs import export as export_job
from jobs import finetune_data
from pipeline import storage
from pipeline.checkpoint import save_model
from pipeline.models.export import export_stage1, export_stage2
from pipeline.models.export_finetune import CAPTION_GENERATION, VQA_GENERATION
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2
from pipeline.run_log import load_rows
from pipeline.stages import load_model
from tests.test_finetune_models import BIG, _images
from tests.test_train import _run

pytestmark = pytest.mark.slow


def _vqav2_files(root, n_images=32):
    """Synthetic scenes written as a VQAv2 questions + annotations pair over COCO-style image paths."""
    cfg = SyntheticConfig(image_size=32)
    questions, annotations = [], []
    for i in range(n_images):
        s = make_sample(cfg, "train", i)
        p = root / "img" / "train2014" / f"COCO_train2014_{i:012d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s["jpg"])
        for j, qa in enumerate(s["json"]["qa"]):
            qid = i * 10 + j
            questions.append({"image_id": i, "question": qa["question"], "question_id": qid})
            annotations.append({"question_id": qid, "image_id": i, "answers": [{"answer": qa["answer"]}] * 10})
    (root / "q.json").write_text(json.dumps({"data_subtype": "train2014", "questions": questions}))
    (root / "a.json").write_text(json.dumps({"annotations": annotations}))


def _args(zoo, recipe, data, root, scfg, init_from=None, **over):
    q = {**TINY_QFORMER, "tokenizer": zoo["bert"], "bert_init": zoo["bert"] if recipe != "caption" else None}
    args = {"model.vision.name_or_path": zoo["vision"], "model.vision.dtype": "fp32", "model.vision.image_size": BIG,
            **{f"model.qformer.{k}": v for k, v in q.items()}, "data.uri": data, "data.image_size": BIG,
            "init_from": init_from, "train.batch_size": 4, "train.num_workers": 2, "train.cpus_per_worker": 0.5,
            "train.zero_stage": 2, "train.gpus_per_worker": 0, "train.log_every": 1, "train.max_steps": 4, "train.checkpoint_every": 2,
            "optim.warmup_steps": 2, "optim.lr": 1e-3, "train.storage_path": f"{root}/runs", "train.run_name": recipe,
            "train.ray_address": "local", "storage.endpoint_url": scfg.endpoint_url, **over}
    if recipe != "retrieval":
        args.update({"model.llm.name_or_path": zoo["opt"], "model.llm.dtype": "fp32", "model.max_txt_len": 32})
    return ["--config", f"configs/finetune_{recipe}.yaml", *[f"{k}={'null' if v is None else v}"
                                                              for k, v in args.items()]]


@pytest.mark.parametrize("recipe", ["caption", "vqa", "retrieval"])
def test_finetune_recipe_on_two_workers_checkpoints_resumes_and_exports(recipe, tiny_zoo, s3_bucket, tmp_path,
                                                                          monkeypatch):
    root, scfg = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", scfg.endpoint_url)
    storage.set_default(scfg)
    env = {**os.environ, "AWS_ENDPOINT_URL": scfg.endpoint_url}
    torch.manual_seed(0)
    # Captioning starts from a stage-2 checkpoint (init_from); retrieval and VQA from transformers folders on S3
    # (init_from_hf), as exported from a stage-1 / stage-2 model: a released checkpoint has the same layout.
    start = {}
    if recipe == "caption":
        save_model(Blip2Stage2(tiny_stage2(tiny_zoo, "opt")), "stage2", f"{root}/init", scfg)
        start = {"init_from": f"{root}/init"}
    else:
        m = Blip2Stage1(tiny_stage1(tiny_zoo)) if recipe == "retrieval" else Blip2Stage2(tiny_stage2(tiny_zoo, "opt"))
        (export_stage1 if recipe == "retrieval" else export_stage2)(m, str(tmp_path / "init_hf"))
        storage.upload_dir(str(tmp_path / "init_hf"), f"{root}/init_hf", scfg)
        start = {"init_from": None, "init_from_hf": f"{root}/init_hf"}
    if recipe == "vqa":  # VQAv2 files -> records
        _vqav2_files(tmp_path)
        data = f"{root}/vqav2"
        finetune_data.main(["vqav2", "--questions", str(tmp_path / "q.json"), "--annotations",
                            str(tmp_path / "a.json"), "--images", str(tmp_path / "img"), "--output", data])
    else:  # COCO Karpathy JSON -> records (the data-prep Parquet schema)
        cfg, entries = SyntheticConfig(image_size=32), []
        (tmp_path / "img" / "val2014").mkdir(parents=True, exist_ok=True)
        for i in range(32):
            s = make_sample(cfg, "train", i)
            entries.append({"image": f"val2014/COCO_val2014_{i:012d}.jpg", "caption": s["txt"]})
            (tmp_path / "img" / entries[-1]["image"]).write_bytes(s["jpg"])
        (tmp_path / "k.json").write_text(json.dumps(entries))
        data = f"{root}/coco"
        finetune_data.main(["coco", "--annotations", str(tmp_path / "k.json"), "--images", str(tmp_path / "img"),
                            "--output", data, "--shard-size", "16"])
    args = _args(tiny_zoo, recipe, data, root, scfg, **start)
    r = _run(args, script="jobs/finetune.py", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = load_rows(f"{root}/runs/{recipe}", 10**9, keys=False)
    assert [x["step"] for x in rows] == [1, 2, 3, 4] and all(x["loss"] > 0 for x in rows)

    steps = 4
    if recipe == "caption":  # resume (the loop is shared, once is enough): the same command, more steps
        r = _run(args + ["train.max_steps=6"], script="jobs/finetune.py", env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "resumed from" in r.stdout + r.stderr and "at step 4" in r.stdout + r.stderr
        steps = 6
    latest = json.loads(storage.read_text(f"{root}/runs/{recipe}/latest.json"))
    assert latest["step"] == steps

    # what was trained: ViT blocks and Q-Former (changed from their start), never the LLM (not even saved)
    state = load_st(storage.read_bytes(f"{latest['uri']}/model.safetensors"))
    assert any(k.startswith("vision.tower.encoder.layers.0.") for k in state)
    assert any(k.startswith("qformer.") for k in state) and not any(k.startswith("llm.") for k in state)
    stage, model = load_model(latest["uri"])  # from its model.yaml alone (the folder it started from, on S3)
    assert stage.name == f"finetune_{recipe}"
    from transformers import Blip2VisionModel

    start = Blip2VisionModel.from_pretrained(tiny_zoo["vision"]).state_dict()
    w = "encoder.layers.0.mlp.fc1.weight"
    assert not torch.allclose(model.vision.tower.state_dict()[w], start[w])

    out = str(tmp_path / "hf")
    export_job.main(["--checkpoint", latest["uri"], "--out", out])
    model.eval()
    x = _images(2, BIG, seed=3)
    if recipe == "retrieval":
        hf = Blip2ForImageTextRetrieval.from_pretrained(out).eval()
        t = model.tokenize(["a red circle", "two blue squares"])
        with torch.no_grad():
            emb, feats = model.image_features(x)
            itc = torch.einsum("iqe,te->itq", feats, model.text_features(**t)).amax(-1)
            itm = model.itm_logits(t["input_ids"], t["attention_mask"], emb)
            kw = {"pixel_values": x, "input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}
            torch.testing.assert_close(hf(**kw).logits_per_image, itc, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hf(**kw, use_image_text_matching_head=True).logits_per_image, itm,
                                       atol=1e-5, rtol=1e-5)
        return
    q = model.qformer.num_query
    if recipe == "caption":
        hf = Blip2ForConditionalGeneration.from_pretrained(out).eval()
        ours = model.generate(x, **CAPTION_GENERATION)
        p = model.tokenizer(["a photo of"] * 2, return_tensors="pt")
        ids = torch.cat([torch.full((2, q), hf.config.image_token_index), p.input_ids], 1)
        gen = hf.generate(pixel_values=x, input_ids=ids, attention_mask=torch.ones_like(ids),
                          generation_config=hf.generation_config)
        assert [s.strip() for s in model.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)] \
            == ours
        return
    hf = InstructBlipForConditionalGeneration.from_pretrained(out).eval()
    question = "what color is the circle?"
    ours = model.generate(x[:1], questions=[question], **VQA_GENERATION)
    qt = model.qformer_text([question])
    p = model.tokenizer([model.vqa_prompt(question)], return_tensors="pt")
    ids = torch.cat([torch.full((1, q), hf.config.image_token_index), p.input_ids], 1)
    gen = hf.generate(pixel_values=x[:1], qformer_input_ids=qt["qformer_input_ids"],
                      qformer_attention_mask=qt["qformer_attention_mask"], input_ids=ids,
                      attention_mask=torch.ones_like(ids), generation_config=hf.generation_config)
    assert [s.strip() for s in model.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)] == ours
