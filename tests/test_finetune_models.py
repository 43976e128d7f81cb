"""Fine-tuning recipes on the tiny models: position-embedding interpolation, layer-wise lr decay, which parameters
gradients reach, the VQA question in the Q-Former and the targets of each recipe (issue 15, part 2)."""

import pytest
import torch
from transformers import Blip2VisionModel

from demo.tiny_zoo import tiny_stage1, tiny_stage2
from pipeline.layer_decay import layer_decay_groups
from pipeline.losses import stage1_losses, stage2_losses
from pipeline.models.finetune import recipe_model_config
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2
from pipeline.models.vision import VisionConfig, build_vision
from pipeline.optim import lr_lambda

BIG = 48  # the tiny tower is 32 px / patch 8 (4x4 grid); fine-tuning "364" is 48 px here (6x6 grid)


def _build(recipe, zoo, llm="opt", **kw):
    if recipe == "retrieval":
        return Blip2Stage1(recipe_model_config(recipe, tiny_stage1(zoo, bert_init=None), image_size=BIG, **kw))
    cfg = recipe_model_config(recipe, tiny_stage2(zoo, llm, tokenizer=zoo["bert"]), image_size=BIG, **kw)
    cfg.max_txt_len = 32  # the tiny tokenizers spell "Question:" in several tokens
    return Blip2Stage2(cfg)


def _images(n, size, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_position_interpolation_to_a_larger_image(tiny_zoo):
    x32, x48 = _images(2, 32), _images(2, BIG)
    plain = build_vision(VisionConfig(name_or_path=tiny_zoo["vision"], dtype="fp32")).eval()
    same = build_vision(VisionConfig(name_or_path=tiny_zoo["vision"], dtype="fp32", image_size=32)).eval()
    big = build_vision(VisionConfig(name_or_path=tiny_zoo["vision"], dtype="fp32", image_size=BIG)).eval()
    with torch.no_grad():
        # At the tower's own size the interpolation is the identity: the 32-px output is bit-for-bit unchanged.
        assert torch.equal(same(x32), plain(x32))
        # At 48 px: 1 + 6*6 tokens, equal to transformers' run-time interpolation of the original embeddings.
        out = big.tower(pixel_values=x48).last_hidden_state
        assert out.shape[1] == 1 + 6 * 6 and big.tower.config.image_size == BIG and big.image_size == BIG
        hf = Blip2VisionModel.from_pretrained(tiny_zoo["vision"]).eval()
        ref = hf(pixel_values=x48, interpolate_pos_encoding=True).last_hidden_state
        # our tower has post_layernorm removed (features without a final norm); compare before it
        ref_pre = hf.encoder(inputs_embeds=hf.embeddings(x48, interpolate_pos_encoding=True)).last_hidden_state
        torch.testing.assert_close(out, ref_pre, atol=1e-6, rtol=1e-6)
        assert not torch.equal(ref, ref_pre)


def test_layer_decay_gives_each_vit_block_its_lr(tiny_zoo):
    m = _build("caption", tiny_zoo)
    n_blocks = m.vision.tower.config.num_hidden_layers
    lr, decay, warmup, total = 1e-5, 0.95, 4, 20
    groups = layer_decay_groups(m, lr, 0.05, decay, n_blocks)
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, total, lr, 0.0))
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(m.named_parameters())
    for step in range(6):
        mult = lr_lambda(step, warmup, total, lr, 0.0)
        for i in range(n_blocks):
            block = [p for n, p in named.items() if n.startswith(f"vision.tower.encoder.layers.{i}.")]
            assert block
            for p in block:  # block i is LAVIS layer i + 1: lr * decay ** (L + 1 - (i + 1))
                assert abs(group_of[id(p)]["lr"] - mult * lr * decay ** (n_blocks - i)) < 1e-12
        for n in ("vision.tower.embeddings.position_embedding", "vision.tower.embeddings.patch_embedding.weight"):
            assert abs(group_of[id(named[n])]["lr"] - mult * lr * decay ** (n_blocks + 1)) < 1e-12
        for n, p in named.items():
            if n.startswith(("qformer.", "vision.ln_vision", "language_projection")):
                assert abs(group_of[id(p)]["lr"] - mult * lr) < 1e-12, n
        opt.step()
        sched.step()
    assert {g["weight_decay"] for g in groups if g["name"].endswith("no_decay")} == {0.0}


def _grad_names(m, loss):
    m.zero_grad(set_to_none=True)
    loss.backward()
    return {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("recipe,llm", [("caption", "opt"), ("caption", "t5"), ("vqa", "opt"), ("vqa", "t5"),
                                        ("retrieval", None)])
def test_gradients_reach_the_vit_blocks_and_qformer_never_the_llm(tiny_zoo, synthetic_batch, recipe, llm):
    torch.manual_seed(0)
    m = _build(recipe, tiny_zoo, llm or "opt").train()
    x = torch.nn.functional.interpolate(synthetic_batch[0][:4], size=BIG, mode="bilinear")
    caps = synthetic_batch[1][:4]
    if recipe == "retrieval":
        loss = stage1_losses(m(x, **m.tokenize(caps)))["loss"]
    elif recipe == "vqa":
        loss = stage2_losses(m(x, **m.tokenize_vqa(["what color is the shape?"] * 4, ["red", "blue", "a", "b"])))[
            "loss"]
    else:
        loss = stage2_losses(m(x, **m.tokenize(caps)))["loss"]
    got = _grad_names(m, loss)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert got == trainable, sorted(got ^ trainable)
    tower = {n for n in trainable if n.startswith("vision.tower.")}
    n_blocks = m.vision.tower.config.num_hidden_layers
    assert all(any(n.startswith(f"vision.tower.encoder.layers.{i}.") for n in tower) for i in range(n_blocks))
    assert all(n.startswith(("vision.", "qformer.", "language_projection", "vision_proj", "text_proj", "itm_head",
                             "temp")) for n in trainable)
    if recipe != "retrieval":
        assert all(not p.requires_grad and p.grad is None for p in m.llm.parameters())
    assert m.vision.tower.training  # the trained tower is in train mode (and checkpoints its blocks)
    assert m.vision.tower.encoder.gradient_checkpointing


@pytest.mark.parametrize("llm", ["opt", "t5"])
def test_vqa_question_reaches_the_qformer_and_only_answers_are_targets(tiny_zoo, llm):
    m = _build("vqa", tiny_zoo, llm).eval()
    x = _images(2, BIG)
    t1 = m.tokenize_vqa(["what color is the circle?", "how many objects are there?"], ["red", "two"])
    t2 = m.tokenize_vqa(["what shape is on the left?", "is there a square?"], ["red", "two"])
    with torch.no_grad():
        img = m.vision(x)
        q1 = m.qformer.encode_multimodal(t1["qformer_input_ids"], t1["qformer_attention_mask"], img)[:, :8]
        q2 = m.qformer.encode_multimodal(t2["qformer_input_ids"], t2["qformer_attention_mask"], img)[:, :8]
        assert (q1 - q2).abs().amax(dim=(1, 2)).min() > 1e-4  # each sample's query outputs move with its question
        s1, s2 = m.soft_prompts(x, t1["qformer_input_ids"], t1["qformer_attention_mask"]), \
            m.soft_prompts(x, t2["qformer_input_ids"], t2["qformer_attention_mask"])
        assert not torch.allclose(s1, s2)
    # (the tiny BERT vocabulary has no "?": it is [UNK], dropped by skip_special_tokens)
    assert m.qformer_tokenizer.decode(t1["qformer_input_ids"][0], skip_special_tokens=True).startswith(
        "what color is the circle")
    tok = m.tokenizer
    answers = [tok.decode(row[row >= 0], skip_special_tokens=True) for row in t1["labels"]]
    if llm == "opt":
        assert answers == [" red\n", " two\n"]
        assert tok.decode(t1["input_ids"][0], skip_special_tokens=True) == "Question: what color is the circle? " \
                                                                            "Answer: red\n"
    else:
        assert answers == ["red", "two"]
        # (the tiny T5 vocabulary has no "Q", "S" or "?": they drop out of the decoded text)
        assert tok.decode(t1["input_ids"][0], skip_special_tokens=True) == "uestion: what color is the circle " \
                                                                            "hort answer:"


def test_caption_recipe_targets(tiny_zoo):
    opt = _build("caption", tiny_zoo, "opt")
    t = opt.tokenize(["two blue squares"])
    assert opt.tokenizer.decode(t["labels"][0][t["labels"][0] >= 0]) == " two blue squares\n"
    t5 = _build("caption", tiny_zoo, "t5")
    t = t5.tokenize(["two blue squares on the left"])
    assert t5.tokenizer.decode(t["input_ids"][0], skip_special_tokens=True) == "a photo of"
    assert t5.tokenizer.decode(t["labels"][0][t["labels"][0] >= 0], skip_special_tokens=True) == \
        "two blue squares on the left"
