"""Vision-only loading from a whole BLIP-2 checkpoint: the same tower, without the LLM passing through memory."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
)

from pipeline.models.vision import DTYPES

# Vision ~4.9M parameters (~20 MB fp32); the OPT LLM's embedding alone is 51M (~205 MB), 10x the tower.
VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4, image_size=56,
              patch_size=14)
LLM = dict(vocab_size=50000, hidden_size=1024, word_embed_proj_dim=1024, ffn_dim=64, num_hidden_layers=1,
           num_attention_heads=4, max_position_embeddings=64)


@pytest.fixture(scope="module")
def blip2_folders(tmp_path_factory):
    """A composite Blip2ForConditionalGeneration saved as one safetensors file and as 20 MB shards."""
    cfg = Blip2Config(vision_config=Blip2VisionConfig(**VISION).to_dict(),
                      qformer_config=Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=64).to_dict(),
                      text_config=OPTConfig(**LLM).to_dict(), num_query_tokens=4)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(cfg).eval()
    root = tmp_path_factory.mktemp("blip2")
    single, sharded = str(root / "single"), str(root / "sharded")
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="20MB")
    vision = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    llm_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    return {"single": single, "sharded": sharded, "vision": vision, "llm_bytes": llm_bytes}


def _probe(folder: str, dtype: str, mode: str, out: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "tests.rss_probe", folder, dtype, mode, out], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout,dtype", [("single", "fp32"), ("single", "fp16"), ("sharded", "fp32"), ("sharded", "bf16")])
def test_vision_only_loading_is_identical_and_small(blip2_folders, layout, dtype, tmp_path):
    folder = blip2_folders[layout]
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json")) == (layout == "sharded")
    res = _probe(folder, dtype, "vision", str(tmp_path / "tower.safetensors"))
    got = load_file(str(tmp_path / "tower.safetensors"))
    want = {k: v.to(DTYPES[dtype]) for k, v in blip2_folders["vision"].items()}
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert res["tower_bytes"] == sum(v.numel() * v.element_size() for v in want.values())
    assert blip2_folders["llm_bytes"] > 8 * res["tower_bytes"]  # the LLM is much larger than the tower
    print(f"{layout} {dtype}: peak RSS +{res['peak_increase'] / 2**20:.1f} MiB, tower "
          f"{res['tower_bytes'] / 2**20:.1f} MiB, LLM {blip2_folders['llm_bytes'] / 2**20:.1f} MiB")
    assert res["peak_increase"] < 2 * res["tower_bytes"]


def test_rss_probe_sees_the_llm_in_a_whole_model_load(blip2_folders, tmp_path):
    """The control: loading the whole model in bf16 (the LLM cast too) raises the peak by more than the bf16 LLM."""
    res = _probe(blip2_folders["single"], "bf16", "whole-dtype", str(tmp_path / "tower.safetensors"))
    print(f"whole model in bf16: peak RSS +{res['peak_increase'] / 2**20:.1f} MiB")
    assert res["peak_increase"] > blip2_folders["llm_bytes"] / 2
