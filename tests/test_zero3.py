"""ZeRO-3 at a real width (Q-Former hidden size 768, 2 CPU workers): the trainable weights are gathered into the
checkpoint (DeepSpeed's persistence threshold leaves 768x768 matrices split), the export loads in transformers and
scores like the trained model, stage 2 starts from it with its frozen LLM split too, and a resume is exact."""

import json
import os

import pytest
import torch

from tests.test_train import _metrics, _run, tiny_args

# Four training runs of 2 workers: longer than the suite's 480 s default on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

WIDE = {"model.qformer.hidden_size": 768, "model.qformer.num_heads": 12, "model.qformer.intermediate_size": 768,
        "model.qformer.bert_init": "null", "train.zero_stage": 3, "train.max_steps": 6, "train.checkpoint_every": 3}


def test_zero3_wide_checkpoint_export_stage2_and_resume(tiny_zoo, prepped, s3_bucket, synthetic_batch, tmp_path,
                                                        monkeypatch):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load as load_st
    from transformers import Blip2ForImageTextRetrieval

    from jobs import export as export_job
    from pipeline import storage
    from pipeline.stages import load_model

    root, scfg = s3_bucket
    monkeypatch.setattr(storage, "_DEFAULT", scfg)  # load_rows reads the run log from moto
    env = {**os.environ, "AWS_ENDPOINT_URL": scfg.endpoint_url}
    s3 = [f"storage.endpoint_url={scfg.endpoint_url}"]
    args = tiny_args(tiny_zoo, prepped, f"{root}/runs", "z3", **WIDE) + s3
    r = _run(args, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "ZeRO-3 split across 2 ranks: trainable " in out
    split = out.split("ZeRO-3 split across 2 ranks: trainable ")[1].split("/")[0]
    assert int(split) > 0, "nothing was partitioned: the test would not exercise the gather"
    run = f"{root}/runs/z3"
    first = _metrics(run)
    latest = json.loads(storage.read_text(f"{run}/latest.json", scfg))
    assert latest["step"] == 6

    # model.safetensors holds every trainable tensor whole, equal to DeepSpeed's own consolidation of the fp32
    # optimizer partitions of both ranks
    state = load_st(storage.read_bytes(f"{latest['uri']}/model.safetensors", scfg))
    assert state["qformer.qformer.encoder.layer.0.attention.attention.query.weight"].shape == (768, 768)
    local = storage.local_copy(latest["uri"], str(tmp_path / "ckpt" / "step_00000006"), scfg)
    ref = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(local), tag="step_00000006",
                                                   exclude_frozen_parameters=True)
    assert set(ref) == set(state)
    for k in state:
        torch.testing.assert_close(state[k], ref[k], rtol=0, atol=0, msg=k)

    # export: transformers loads it with no missing or unexpected keys and gives the trained model's ITC scores
    export_job.main(["--checkpoint", latest["uri"], "--out", str(tmp_path / "hf"), "--endpoint-url",
                     scfg.endpoint_url])
    hf, info = Blip2ForImageTextRetrieval.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _, ours = load_model(latest["uri"], scfg)
    x, caps = synthetic_batch
    hf.eval(), ours.eval()
    t = ours.tokenize(caps[:6])
    with torch.no_grad():
        _, image_feats = ours.image_features(x[:6])
        itc_ours = torch.einsum("iqe,te->itq", image_feats, ours.text_features(**t)).amax(-1)
        itc_hf = hf(pixel_values=x[:6], **t).logits_per_image
    torch.testing.assert_close(itc_hf, itc_ours, atol=1e-5, rtol=1e-5)

    # stage 2 from that checkpoint, every parameter split (threshold 0): the frozen LLM too
    s2 = [a for a in tiny_args(tiny_zoo, prepped, f"{root}/runs", "z3s2", **WIDE)
          if not a.startswith(("model.qformer.tokenizer", "model.qformer.bert_init", "train.max_steps"))]
    s2 += [f"model.llm.name_or_path={tiny_zoo['opt']}", "model.llm.dtype=fp32", f"init_from={latest['uri']}",
           "model.max_txt_len=16", "train.max_steps=2", "train.zero3_persistence_threshold=0", *s3]
    r = _run(s2, script="jobs/stage2.py", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    frozen = (r.stdout + r.stderr).split("ZeRO-3 split across 2 ranks: ")[1].split("frozen ")[1].split(" tensors")[0]
    n_split, n_frozen = map(int, frozen.split("/"))
    assert n_split == n_frozen > 0  # the vision tower and the LLM, every tensor
    rows = _metrics(f"{root}/runs/z3s2")
    assert [x["step"] for x in rows] == [1, 2] and all(x["lm_loss"] > 0 for x in rows)
    s2_state = load_st(storage.read_bytes(f"{root}/runs/z3s2/checkpoints/step_00000002/model.safetensors", scfg))
    assert s2_state["language_projection.weight"].shape[1] == 768

    # resume under ZeRO-3: point latest.json back at step 3 and rerun; steps 4-6 repeat the first run exactly
    storage.write_text(f"{run}/latest.json", json.dumps({"tag": "step_00000003", "step": 3,
                                                         "uri": f"{run}/checkpoints/step_00000003"}), scfg)
    r = _run(args, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "at step 3" in r.stdout + r.stderr
    again = _metrics(run)
    assert [x["step"] for x in again] == list(range(1, 7))
    for a, b in zip(first, again):
        for k in ("itc_loss", "itm_loss", "itg_loss", "loss"):
            assert abs(a[k] - b[k]) <= 1e-6, (a["step"], k, a[k], b[k])
        assert a["keys"] == b["keys"]
