import json
import os

from jobs import demo


def test_short_demo_runs_every_built_stage(tmp_path):
    out = str(tmp_path / "demo")
    res = demo.main(["--out", out, "--num-samples", "200", "--steps", "3", "--batch", "8"])
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["wall_seconds"] == res["wall_seconds"]
    for k in ("stage1_first", "stage1_last", "stage2_first", "stage2_last", "examples"):
        assert k in saved
    assert set(saved["stage1_last"]) == {"itc_loss", "itm_loss", "itg_loss", "loss"}
    assert os.path.exists(os.path.join(out, "hf_model", "config.json"))
    assert os.path.exists(os.path.join(out, "hf_retrieval", "config.json"))
    assert "steps: 3" in open(os.path.join(out, "config.yaml")).read()
