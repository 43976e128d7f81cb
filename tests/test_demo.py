import json
import os
import subprocess
import sys

import pytest

from tests.procs import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("retrieval_tr1", "retrieval_ir1", "retrieval_chance_r1", "capfilt_precision", "capfilt_recall",
          "retrieval_ir1_before_capfilt", "retrieval_ir1_after_capfilt", "caption_cider",
          "caption_attribute_accuracy", "vqa_accuracy", "wall_seconds")


def _quick_demo(out: str, hash_seed: str) -> dict:
    env = child_env(PYTHONHASHSEED=hash_seed, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "jobs/demo.py", "--out", out, "--quick"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.load(open(os.path.join(out, "results.json")))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_demo_twice_same_seed_same_metrics(tmp_path):
    """Every stage runs and writes every field; a second run with the same seed, in another process with another
    hash seed, gives identical metrics to the last digit; then the captioning fine-tuning command runs on it."""
    out = str(tmp_path / "demo")
    saved = _quick_demo(out, "1")
    for f in FIELDS:
        assert f in saved, f
    assert 0.0 <= saved["capfilt_precision"] <= 1.0 and saved["retrieval_chance_r1"] > 0
    for f in ("hf_model/config.json", "hf_retrieval/config.json", "examples.png", "loss_stage1-noisy.png",
              "loss_stage2.png", "config.yaml"):
        assert os.path.exists(os.path.join(out, f)), f

    second = _quick_demo(str(tmp_path / "again"), "12345")
    differ = {k: (saved[k], second[k]) for k in saved if k != "wall_seconds" and saved[k] != second[k]}
    assert not differ, differ

    # the captioning fine-tuning command on the finished run: a few steps, both models scored on the same split
    env = child_env(PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "demo.finetune_caption", "--demo", out, "--steps", "3", "--samples",
                        "64"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    ft = json.load(open(os.path.join(out, "finetune_caption.json")))
    assert ft["stage2_caption_attribute_accuracy"] == saved["caption_attribute_accuracy"]
    assert 0.0 <= ft["finetuned_caption_attribute_accuracy"] <= 1.0 and ft["steps"] == 3
    assert os.path.exists(os.path.join(out, "finetune_caption", "runs", "finetune_caption", "config.yaml"))
