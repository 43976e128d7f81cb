import pytest
import torch

from demo.tiny_zoo import tiny_stage1, tiny_stage2
from pipeline.losses import itg_attention_mask, stage1_losses, stage2_losses
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2


def test_itg_mask_matches_reference_pattern():
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    q = 3
    got = itg_attention_mask(text_mask, q)
    for b in range(3):
        for i in range(q + 5):
            for j in range(q + 5):
                if i < q:  # queries see queries only
                    want = j < q
                elif j < q:  # text sees every query
                    want = True
                else:  # text sees earlier (and its own) non-padding text
                    want = (j - q) <= (i - q) and bool(text_mask[b, j - q])
                assert bool(got[b, i, j]) == want, (b, i, j)


def test_frozen_vision_encoder(tiny_zoo, synthetic_batch):
    torch.manual_seed(0)
    m = Blip2Stage1(tiny_stage1(tiny_zoo))
    m.train()
    assert not m.vision.tower.training and m.qformer.training
    assert all(not p.requires_grad for p in m.vision.tower.parameters())
    assert all(p.requires_grad for p in m.vision.ln_vision.parameters())
    with torch.enable_grad():
        assert m.vision(synthetic_batch[0][:2]).grad_fn is not None  # ln_vision is trainable
    # the tower's output inside forward carries no graph
    x = synthetic_batch[0][:2]
    with torch.enable_grad():
        inner = []
        h = m.vision.tower.register_forward_hook(lambda mod, i, o: inner.append(o.last_hidden_state))
        m.vision(x)
        h.remove()
    assert inner[0].grad_fn is None and not inner[0].requires_grad


def test_bert_init_and_query_ffn_copy(tiny_zoo):
    from transformers import BertForMaskedLM

    m = Blip2Stage1(tiny_stage1(tiny_zoo))
    bert = BertForMaskedLM.from_pretrained(tiny_zoo["bert"]).state_dict()
    layer = m.qformer.qformer.encoder.layer[1]
    src = "bert.encoder.layer.1"
    assert torch.equal(layer.intermediate_query.dense.weight, bert[f"{src}.intermediate.dense.weight"])
    assert torch.equal(layer.output_query.dense.weight, bert[f"{src}.output.dense.weight"])
    assert torch.equal(layer.intermediate.dense.weight, layer.intermediate_query.dense.weight)
    assert torch.equal(layer.attention.attention.query.weight, bert[f"{src}.attention.self.query.weight"])
    we = m.qformer.embeddings.word_embeddings.weight
    n = bert["bert.embeddings.word_embeddings.weight"].shape[0]
    assert we.shape[0] == n + 1 and torch.equal(we[:n], bert["bert.embeddings.word_embeddings.weight"])
    assert m.tokenizer.convert_ids_to_tokens(m.bos_id) == "[DEC]" and m.bos_id == n
    assert m.qformer.qformer.encoder.layer[0].has_cross_attention
    assert not m.qformer.qformer.encoder.layer[1].has_cross_attention


def _grad_names(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_each_stage1_loss_reaches_exactly_its_parameters(tiny_zoo, synthetic_batch):
    torch.manual_seed(0)
    m = Blip2Stage1(tiny_stage1(tiny_zoo)).eval()
    x, caps = synthetic_batch
    out = m(x[:8], **m.tokenize(caps[:8]))
    losses = stage1_losses(out)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    last = f"qformer.qformer.encoder.layer.{m.qformer.hf_config.num_hidden_layers - 1}"

    def without(*prefixes):
        return {n for n in trainable if not n.startswith(prefixes)}

    expected = {
        "itc_loss": without("itm_head", "qformer.lm_head"),
        # the last layer's text FFN never feeds a query output
        "itm_loss": without("vision_proj", "text_proj", "temp", "qformer.lm_head", f"{last}.intermediate.",
                            f"{last}.output."),
        # the last layer's query FFN never feeds a text output
        "itg_loss": without("vision_proj", "text_proj", "temp", "itm_head", f"{last}.intermediate_query.",
                            f"{last}.output_query."),
    }
    for name, want in expected.items():
        got = _grad_names(m, losses[name])
        assert got == want, (name, sorted(got ^ want))
        assert all(p.grad is None for p in m.vision.tower.parameters())


def test_stage2_loss_reaches_only_the_query_path(tiny_zoo, synthetic_batch):
    x, caps = synthetic_batch
    for llm in ("opt", "t5"):
        m = Blip2Stage2(tiny_stage2(tiny_zoo, llm)).eval()
        loss = stage2_losses(m(x[:4], **m.tokenize(caps[:4])))["loss"]
        got = _grad_names(m, loss)
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert got == trainable
        assert all(n.startswith(("vision.ln_vision", "qformer.", "language_projection")) for n in trainable)
        assert all(not p.requires_grad and p.grad is None for p in m.llm.parameters())
        assert all(p.grad is None for p in m.vision.tower.parameters())
        assert not any(".intermediate." in n or ".output.dense" in n and "attention" not in n for n in trainable)


def test_stage2_labels_mask_queries_padding_and_prompt(tiny_zoo, synthetic_batch):
    cfg = tiny_stage2(tiny_zoo, "opt")
    cfg.prompt = "a photo of"
    m = Blip2Stage2(cfg)
    t = m.tokenize(["a red circle", "a big blue box on the left"])
    prompt_len = len(m.tokenizer("a photo of").input_ids)
    assert (t["labels"][:, :prompt_len] == -100).all()
    assert ((t["labels"] == -100) == ((t["attention_mask"] == 0) | (torch.arange(t["labels"].shape[1]) < prompt_len))
            ).all()
    out = m(synthetic_batch[0][:2], **t)
    q = cfg.qformer.num_query_tokens
    assert (out["labels"][:, :q] == -100).all() and out["logits"].shape[1] == out["labels"].shape[1]


def test_t5_prefix_split(tiny_zoo):
    import random

    m = Blip2Stage2(tiny_stage2(tiny_zoo, "t5"))
    rng = random.Random(0)
    caption = "a big blue box on the left"
    for _ in range(20):
        t = m.tokenize([caption], rng=rng)
        prefix = m.tokenizer.decode(t["input_ids"][0], skip_special_tokens=True)
        suffix = m.tokenizer.decode(t["labels"][0][t["labels"][0] >= 0], skip_special_tokens=True)
        k = len(prefix.split())
        assert 1 <= k <= len(caption.split()) // 2
        assert (prefix + " " + suffix).split() == caption.split()


def test_paper_preset_parameter_counts():
    from pipeline.models.presets import PAPER_STAGE1_M, PAPER_STAGE2_TRAINABLE_M, stage1_counts, stage2_counts

    assert abs(stage1_counts()["trainable"] / 1e6 - PAPER_STAGE1_M) / PAPER_STAGE1_M < 0.01
    for (vision, llm), paper in PAPER_STAGE2_TRAINABLE_M.items():
        got = stage2_counts(vision, llm)["trainable"] / 1e6
        assert abs(got - paper) / paper < 0.02, (vision, llm, got)


def test_clip_vision_tower_with_last_block_dropped(tiny_zoo, synthetic_batch, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from pipeline.models.vision import VisionConfig

    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(tmp_path / "clip")
    cfg = tiny_stage1(tiny_zoo)
    cfg.vision = VisionConfig(name_or_path=str(tmp_path / "clip"), drop_last_layer=True, dtype="fp32")
    m = Blip2Stage1(cfg)
    from pipeline.models.vision import _layers

    enc, name = _layers(m.vision.tower)
    assert len(getattr(enc, name)) == 2 and m.vision.tower.config.num_hidden_layers == 2
    assert m.vision.ln_vision.eps == 1e-5
    x, caps = synthetic_batch
    losses = stage1_losses(m(x[:4], **m.tokenize(caps[:4])))
    assert torch.isfinite(losses["loss"])
    assert m.vision(x[:4]).shape == (4, 17, 32)  # 16 patches + CLS


def test_stage2_nucleus_sampling_and_vqa_prompt(tiny_zoo, synthetic_batch):
    from pipeline.models.stage2 import VQA_PROMPTS

    torch.manual_seed(0)
    m = Blip2Stage2(tiny_stage2(tiny_zoo, "opt")).eval()
    x = synthetic_batch[0][:2]
    a = m.generate(x, num_beams=1, do_sample=True, top_p=0.9, max_new_tokens=6, num_return_sequences=3)
    assert len(a) == 6
    q = [VQA_PROMPTS[m.kind].format("what color is the circle?")] * 2
    assert len(m.generate(x, prompt=q, num_beams=3, max_new_tokens=4)) == 2


@pytest.mark.parametrize("stage", ["stage1", "opt", "t5"])
def test_whole_model_cast_to_bf16_runs_as_deepspeed_bf16_does(tiny_zoo, synthetic_batch, stage):
    """DeepSpeed bf16 casts every parameter to bf16 (ln_vision included); forward, losses and backward must still
    run, the losses stay fp32 and finite, and every trainable parameter gets a gradient."""
    torch.manual_seed(0)
    x, caps = synthetic_batch
    if stage == "stage1":
        m = Blip2Stage1(tiny_stage1(tiny_zoo)).to(torch.bfloat16)
        losses = stage1_losses(m(x[:4], **m.tokenize(caps[:4])))  # fp32 pixels, as the data loader gives them
    else:
        m = Blip2Stage2(tiny_stage2(tiny_zoo, stage)).to(torch.bfloat16)
        losses = stage2_losses(m(x[:4], **m.tokenize(caps[:4])))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    losses["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
