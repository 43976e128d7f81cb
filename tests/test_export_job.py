import torch
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from demo.tiny_zoo import tiny_stage1, tiny_stage2
from jobs import export as export_job
from pipeline.checkpoint import save_model
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2
from pipeline.stages import load_model


def test_export_command_from_s3_checkpoints(tiny_zoo, synthetic_batch, s3_bucket, tmp_path, monkeypatch):
    root, scfg = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", scfg.endpoint_url)
    x, caps = synthetic_batch
    torch.manual_seed(0)
    s1 = Blip2Stage1(tiny_stage1(tiny_zoo)).eval()
    save_model(s1, "stage1", f"{root}/run/s1", scfg)
    stage, back = load_model(f"{root}/run/s1", scfg)
    assert stage.name == "stage1" and all(torch.equal(a, b) for a, b in zip(s1.parameters(), back.parameters()))
    export_job.main(["--checkpoint", f"{root}/run/s1", "--out", str(tmp_path / "ret")])
    hf = Blip2ForImageTextRetrieval.from_pretrained(str(tmp_path / "ret")).eval()
    t = s1.tokenize(caps[:4])
    with torch.no_grad():
        emb, _ = s1.image_features(x[:4])
        ours = s1.itm_logits(t["input_ids"], t["attention_mask"], emb)
        theirs = hf(pixel_values=x[:4], **t, use_image_text_matching_head=True).logits_per_image
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)

    s2 = Blip2Stage2(tiny_stage2(tiny_zoo, "opt")).eval()
    s2.load_stage1(s1.state_dict())
    save_model(s2, "stage2", f"{root}/run/s2", scfg)
    export_job.main(["--checkpoint", f"{root}/run/s2", "--out", f"{root}/hf"])
    from pipeline.models.loading import resolve

    hf2 = Blip2ForConditionalGeneration.from_pretrained(resolve(f"{root}/hf")).eval()
    torch.testing.assert_close(hf2.query_tokens, s2.qformer.query_tokens)
    torch.testing.assert_close(hf2.language_projection.weight, s2.language_projection.weight)


def test_incomplete_checkpoint_is_refused(tmp_path, tiny_zoo):
    import pytest

    s1 = Blip2Stage1(tiny_stage1(tiny_zoo))
    save_model(s1, "stage1", str(tmp_path / "c"))
    (tmp_path / "c" / "COMPLETE").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_model(str(tmp_path / "c"))


def test_checkpoints_written_before_stages_had_names_still_load(tmp_path, tiny_zoo):
    """model.yaml of earlier checkpoints says ``stage: 1``; it still names stage1, and an unknown stage is refused."""
    import pytest

    s1 = Blip2Stage1(tiny_stage1(tiny_zoo))
    save_model(s1, 1, str(tmp_path / "old"))
    stage, back = load_model(str(tmp_path / "old"))
    assert stage.name == "stage1" and all(torch.equal(a, b) for a, b in zip(s1.parameters(), back.parameters()))
    save_model(s1, "stage9", str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="model.yaml: unknown stage 'stage9'"):
        load_model(str(tmp_path / "bad"))
