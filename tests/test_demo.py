import json
import os

import pytest

from demo import run as demo

FIELDS = ("retrieval_tr1", "retrieval_ir1", "retrieval_chance_r1", "capfilt_precision", "capfilt_recall",
          "retrieval_ir1_before_capfilt", "retrieval_ir1_after_capfilt", "caption_cider",
          "caption_attribute_accuracy", "vqa_accuracy", "wall_seconds")


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_every_field(tmp_path):
    out = str(tmp_path / "demo")
    demo.main(["--out", out, "--quick"])
    saved = json.load(open(os.path.join(out, "results.json")))
    for k in FIELDS:
        assert isinstance(saved[k], float), k
    assert saved["dataprep"]["read"] == 240
    for f in ("hf_model/config.json", "hf_retrieval/config.json", "examples.png", "loss_stage1-noisy.png",
              "loss_stage2.png", "config.yaml"):
        assert os.path.exists(os.path.join(out, f)), f
