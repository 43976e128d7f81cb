"""Stage 2 against the reference code (LAVIS blip2_opt.py / blip2_t5.py): Flan-T5's exact GELU, the frozen LLM's
train mode, and the OPT / T5 prompt (issue 15, part 1)."""

import random

import torch
from transformers import AutoModelForSeq2SeqLM, OPTForCausalLM

from demo.tiny_zoo import tiny_stage2
from pipeline.losses import stage2_losses
from pipeline.models.stage2 import Blip2Stage2


def _t5_logits(llm, embeds, labels):
    return llm(inputs_embeds=embeds, labels=labels).logits


def test_flan_t5_ffn_is_exact_gelu(tiny_zoo):
    """The tiny T5 is saved as gated-gelu (transformers: gelu_new, the tanh form); stage 2 must run exact GELU."""
    m = Blip2Stage2(tiny_stage2(tiny_zoo, "t5")).eval().double()
    assert m.llm.config.dense_act_fn == "gelu"
    ffns = [mod for mod in m.llm.modules() if type(mod).__name__ == "T5DenseGatedActDense"]
    assert ffns and all(type(f.act).__name__ == "GELUActivation" for f in ffns)

    # Reference: the checkpoint as saved, with every FFN activation swapped for torch's exact GELU by hand.
    ref = AutoModelForSeq2SeqLM.from_pretrained(tiny_zoo["t5"]).eval().double()
    tanh = AutoModelForSeq2SeqLM.from_pretrained(tiny_zoo["t5"]).eval().double()
    assert tanh.config.dense_act_fn == "gelu_new"
    for mod in ref.modules():
        if type(mod).__name__ == "T5DenseGatedActDense":
            mod.act = torch.nn.GELU(approximate="none")
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 9, m.llm.config.d_model, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(3, 50, (2, 5), generator=g)
    ours = _t5_logits(m.llm, embeds, labels)
    torch.testing.assert_close(ours, _t5_logits(ref, embeds, labels), rtol=0, atol=1e-12)
    assert (ours - _t5_logits(tanh, embeds, labels)).abs().max() > 1e-6  # the tanh form is measurably different


def test_export_keeps_exact_gelu(tiny_zoo, tmp_path):
    from transformers import Blip2ForConditionalGeneration

    from pipeline.models.export import export_stage2

    m = Blip2Stage2(tiny_stage2(tiny_zoo, "t5")).eval()
    export_stage2(m, str(tmp_path / "hf"))
    hf = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert hf.config.text_config.dense_act_fn == "gelu"


def _dropout_opt(zoo, p=0.1):
    from transformers import AutoTokenizer

    return OPTForCausalLM.from_pretrained(zoo["opt"], dropout=p), AutoTokenizer.from_pretrained(zoo["opt"])


def test_frozen_llm_follows_train_mode_with_dropout(tiny_zoo):
    """LAVIS pins only the ViT to eval; the frozen LLM's dropout is active in training (its runner's model.train())."""
    llm, tok = _dropout_opt(tiny_zoo)
    m = Blip2Stage2(tiny_stage2(tiny_zoo, "opt"), llm=llm, llm_tokenizer=tok)
    ids = tok(["two blue squares"], return_tensors="pt").input_ids

    m.train()
    assert m.llm.training and all(mod.training for mod in m.llm.modules())
    assert not m.vision.tower.training and not any(mod.training for mod in m.vision.tower.modules())
    assert not any(p.requires_grad for p in m.llm.parameters())
    with torch.no_grad():
        assert not torch.equal(m.llm(input_ids=ids).logits, m.llm(input_ids=ids).logits)  # dropout samples differ

    m.eval()
    assert not m.llm.training
    with torch.no_grad():
        assert torch.equal(m.llm(input_ids=ids).logits, m.llm(input_ids=ids).logits)

    cfg = tiny_stage2(tiny_zoo, "opt")
    cfg.llm_train_mode = False  # the opt-out pins the LLM to eval
    llm, tok = _dropout_opt(tiny_zoo)
    pinned = Blip2Stage2(cfg, llm=llm, llm_tokenizer=tok).train()
    assert not pinned.llm.training and pinned.qformer.training


def test_opt_prompt_is_prepended_and_masked(tiny_zoo, synthetic_batch):
    """LAVIS: text = "a photo of " + caption + "\\n"; the first prompt_length tokens (BOS included) are not targets."""
    cfg = tiny_stage2(tiny_zoo, "opt")
    cfg.prompt = "a photo of"
    m = Blip2Stage2(cfg)
    t = m.tokenize(["two blue squares", "a red circle"])
    tok = m.tokenizer
    assert tok.decode(t["input_ids"][0], skip_special_tokens=True) == "a photo of two blue squares\n"
    assert tok.decode(t["input_ids"][0][:1]) == tok.bos_token  # the OPT BOS stays in front of the prompt
    assert tok.decode(t["labels"][0][t["labels"][0] >= 0]) == " two blue squares\n"
    assert tok.decode(t["labels"][1][t["labels"][1] >= 0]) == " a red circle\n"
    # The prompt reaches the LLM: the loss depends on it.
    m.eval()
    x = synthetic_batch[0][:2]
    with torch.no_grad():
        with_prompt = stage2_losses(m(x, **t))["loss"]
        m.cfg.prompt = "there is"
        other = stage2_losses(m(x, **m.tokenize(["two blue squares", "a red circle"])))["loss"]
    assert not torch.isclose(with_prompt, other)


def test_t5_prefix_puts_a_space_after_the_prompt(tiny_zoo):
    cfg = tiny_stage2(tiny_zoo, "t5")
    cfg.prompt = "a photo of"
    m = Blip2Stage2(cfg)
    rng = random.Random(0)
    for _ in range(10):
        t = m.tokenize(["two blue squares on the left"], rng=rng)
        prefix = m.tokenizer.decode(t["input_ids"][0], skip_special_tokens=True)
        suffix = m.tokenizer.decode(t["labels"][0][t["labels"][0] >= 0], skip_special_tokens=True)
        assert prefix.startswith("a photo of two"), prefix
        assert (prefix + " " + suffix).split() == "a photo of two blue squares on the left".split()
