"""CapFilt with its default model classes (configs/dataprep.yaml): a BLIP captioner
(``BlipForConditionalGeneration``, like Salesforce/blip-image-captioning-large) and a CLIP filter (``CLIPModel``,
like openai/clip-vit-large-patch14), built at toy width with local tokenizers and loaded through AutoProcessor
and from_pretrained as the hub checkpoints are."""

import io

import pandas as pd
import pytest
import torch
from PIL import Image

from dataprep.capfilt import Captioner, CaptionFilter, ShardStage


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from demo.capfilt_models import save_capfilt_models

    torch.manual_seed(0)
    return save_capfilt_models(str(tmp_path_factory.mktemp("capfilt_default")), "tiny")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from dataprep.config import SourceConfig, ValidateConfig
    from dataprep.sources import list_shards, read_shard
    from dataprep.validate import validate
    from demo.synthetic import SyntheticConfig, generate

    raw = str(tmp_path_factory.mktemp("raw"))
    generate(SyntheticConfig(num_samples=10, samples_per_shard=10, image_size=64), raw)
    cfg = ValidateConfig(min_size=32, resize_shorter_side=64)
    df = pd.DataFrame([validate(r, cfg) for s in list_shards(raw, SourceConfig()) for r in read_shard(s, SourceConfig())])
    df.loc[3, ["status", "reason"]] = ["filtered", "too_small"]  # passes through both stages untouched
    return df


def test_blip_captioner_samples_per_image_and_strips_the_prompt(models, records):
    cfg = {"model": models[0], "num_captions": 4, "max_length": 8, "prompt": "a picture of ", "seed": 0}
    whole = Captioner(cfg)(records)
    caps = whole["synthetic_captions"].tolist()
    # up to K per image: a sequence that ends at once ([SEP] first) decodes to nothing and is dropped
    assert caps[3] == [] and all(1 <= len(c) <= 4 for i, c in enumerate(caps) if i != 3)
    assert sum(map(len, caps)) >= 32 and all(c for row in caps for c in row)
    assert not any(c.startswith("a picture of") for row in caps for c in row)
    # every new token is kept: the first one too (BLIP's output holds the prompt minus its [SEP])
    gen = Captioner({**cfg, "num_captions": 1, "max_length": 1})(records.iloc[:1])["synthetic_captions"][0]
    assert len(gen) == 1 and len(gen[0].split()) == 1
    assert len({c for row in caps for c in row}) > 30  # sampled, not one caption repeated
    # per-sample draws: other batches and another order give the same captions
    stage = ShardStage("captioner", {**cfg, "batch_size": 3})
    assert pd.DataFrame(stage.run(records.iloc[::-1].to_dict("records")))["synthetic_captions"].tolist()[::-1] == caps


def test_clip_filter_scores_are_clip_cosines_and_keeps_the_top_two(models, records):
    df = records.copy()
    df["synthetic_captions"] = [[f"a red circle {i}", "lorem ipsum", "a blue square"] for i in range(len(df))]
    f = CaptionFilter({"model": models[1], "mode": "topk", "top_k": 2})
    out = f(df)
    assert out.loc[3, "candidate_scores"] == [] and out.loc[3, "status"] == "filtered"
    # the reference: CLIPModel's own logits, logit_scale.exp() x cosine, image by image
    for i in (0, 7):
        cands = [df.loc[i, "web_caption"], *df.loc[i, "synthetic_captions"]]
        pix = f.processor(images=[Image.open(io.BytesIO(df.loc[i, "jpg"]))], return_tensors="pt").pixel_values
        t = f.processor.tokenizer(cands, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        with torch.no_grad():
            ref = f.model(pixel_values=pix, input_ids=t.input_ids, attention_mask=t.attention_mask).logits_per_image[0]
        ref = (ref / f.model.logit_scale.exp()).tolist()
        assert out.loc[i, "candidate_scores"] == pytest.approx(ref, abs=1e-5)
        top = sorted(range(4), key=lambda k: -ref[k])[:2]
        assert out.loc[i, "kept_captions"] == [cands[k] for k in top]
        assert out.loc[i, "web_caption_kept"] == (0 in top)


@pytest.mark.slow
def test_paper_config_runs_as_a_job_with_the_default_model_classes(models, tmp_path):
    """configs/dataprep.yaml as it is (K=10, top-p 0.9, the BLIP prompt, CLIP top 2, prepare threads), with
    only the model paths, widths and resources scaled down: every kept record ranks web + 10 captions, keeps
    the top 2 of them, and the accounting identity holds."""
    import json
    import os
    import sys

    import pyarrow.parquet as pq

    from demo.synthetic import SyntheticConfig, generate
    from tests.procs import child_env, run_ok

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    generate(SyntheticConfig(num_samples=24, samples_per_shard=12, image_size=64), raw)
    over = {"input": raw, "output": out, "ray_address": "local", "validate.min_size": 32,
            "validate.resize_shorter_side": 64, "capfilt.captioner.model": models[0], "capfilt.filter.model": models[1],
            "capfilt.captioner.max_length": 8, "capfilt.captioner.batch_size": 5, "capfilt.filter.batch_size": 7}
    for stage in ("captioner", "filter"):
        over.update({f"capfilt.{stage}.num_gpus": 0, f"capfilt.{stage}.num_cpus": 0.5,
                     f"capfilt.{stage}.max_actors": 1})
    env = child_env(PYTHONPATH=root)
    run_ok([sys.executable, os.path.join(root, "jobs", "dataprep.py"), "--config",
            os.path.join(root, "configs", "dataprep.yaml")] + [f"{k}={v}" for k, v in over.items()], env=env, cwd=root)
    s = json.load(open(os.path.join(out, "_summary.json")))
    assert s["read"] == s["kept"] + s["filtered"] + s["rejected"] == 24 and s["kept"] == 24
    rows = [r for f in sorted(os.listdir(f"{out}/data")) for r in pq.read_table(f"{out}/data/{f}").to_pylist()]
    assert len(rows) == 24 and sum(len(r["synthetic_captions"]) for r in rows) >= 200  # of 240 sampled
    for r in rows:
        cands = [r["web_caption"], *r["synthetic_captions"]]
        assert 1 <= len(r["synthetic_captions"]) <= 10 and len(r["candidate_scores"]) == len(cands)
        top = sorted(range(len(cands)), key=lambda k: -r["candidate_scores"][k])[:2]
        assert r["kept_captions"] == [cands[k] for k in top] and r["web_caption_kept"] == (0 in top)
