"""Tiny, locally built stand-ins for hub models: tokenizers trained with ``tokenizers`` and random-init
transformers models, each saved with ``save_pretrained`` so that everything loads through the real
``from_pretrained`` path. Used by the tests, the ``tiny`` presets and the demo (which then pretrains them).
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Blip2VisionConfig,
    Blip2VisionModel,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from demo.synthetic import COLOURS, NUMBERS, POSITION_PHRASES, SHAPE_SYNONYMS, SIZE_SYNONYMS
from pipeline.models.qformer import QFormerConfig

EXTRA_ROWS = 8  # LLM embeddings get spare rows (like OPT-2.7B's 50272 vs 50265) so <image> fits on export


def corpus() -> list[str]:
    """Every word the synthetic captions, questions and prompts use, in sentence form."""
    words = [*COLOURS, *[w for v in SHAPE_SYNONYMS.values() for w in v], *[w for v in SIZE_SYNONYMS.values() for w in v],
             *POSITION_PHRASES.values(), *NUMBERS.values(), "white", "gray", "black", "yes", "no"]
    lines = [" ".join(words),
             "a picture of a photo there is on the background and with what color is shape object how many objects "
             "are there is there a", "question: answer: short answer:", "lorem ipsum buy now click here free "
             "shipping img jpg dsc photo best price sale www com download 0123456789"]
    return lines * 4


def train_bert_tokenizer(out: str, texts: list[str] | None = None, vocab_size: int = 400):
    """A WordPiece tokenizer whose vocabulary is every word of ``texts`` (most frequent first, then
    alphabetical) plus every character and its ``##`` continuation, so that any text still tokenizes.

    Built, not trained: ``tokenizers``' WordPiece trainer breaks ties between equally frequent merges in hash
    order, so it gave another vocabulary (other token ids) in each process, and the same seed another demo.
    """
    import string
    from collections import Counter

    from transformers import BertTokenizerFast

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in (texts or corpus()) for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in words for c in w} | set(string.ascii_lowercase + string.digits + string.punctuation))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    base = specials + chars + [f"##{c}" for c in chars]
    ranked = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in set(base)]
    vocab = {t: i for i, t in enumerate(base + ranked[:max(0, vocab_size - len(base))])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out)
    return fast


def train_llm_tokenizer(out: str, kind: str = "opt", texts: list[str] | None = None, vocab_size: int = 400):
    """OPT-style (byte-level BPE, ``</s>`` prepended as BOS) or T5-style (``</s>`` appended) tokenizer."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "opt":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts or corpus(), trainer)
        bos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                           special_tokens=[("</s>", bos)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")
    elif kind == "t5":
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        specials = ["<pad>", "</s>", "<unk>"]
        tok.train_from_iterator(texts or corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", eos)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    else:
        raise ValueError(f"tokenizer kind {kind!r}: expected 'opt' or 't5'")
    fast.save_pretrained(out)
    return fast


def save_tiny_bert(out: str, tokenizer, hidden: int = 32, layers: int = 2, heads: int = 2, ffn: int = 64):
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)


def save_tiny_vision(out: str, image_size: int = 32, patch: int = 8, hidden: int = 32, layers: int = 3, heads: int = 2):
    cfg = Blip2VisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=image_size, patch_size=patch, initializer_range=0.02)
    Blip2VisionModel(cfg).save_pretrained(out)


def save_tiny_llm(out: str, kind: str, hidden: int = 32, layers: int = 2, heads: int = 2, max_positions: int = 128,
                  vocab_size: int = 400):
    tok = train_llm_tokenizer(out, kind, vocab_size=vocab_size)
    vocab = len(tok) + EXTRA_ROWS
    if kind == "opt":
        cfg = OPTConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=2 * hidden,
                        num_attention_heads=heads, max_position_embeddings=max_positions, word_embed_proj_dim=hidden,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        dropout=0.0, attention_dropout=0.0)
        OPTForCausalLM(cfg).save_pretrained(out)
    else:
        cfg = T5Config(vocab_size=vocab, d_model=hidden, d_kv=hidden // heads, d_ff=2 * hidden, num_layers=layers,
                       num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
        T5ForConditionalGeneration(cfg).save_pretrained(out)
    return tok


def build_tiny_zoo(root: str, image_size: int = 32, seed: int = 0) -> dict[str, str]:
    """Write a tiny BERT (+ tokenizer), vision tower, OPT and T5 under ``root``; return their paths."""
    import torch

    torch.manual_seed(seed)  # same seed, same random weights
    paths = {k: os.path.join(root, k) for k in ("bert", "vision", "opt", "t5")}
    if not all(os.path.exists(os.path.join(p, "config.json")) for p in paths.values()):
        tok = train_bert_tokenizer(paths["bert"])
        save_tiny_bert(paths["bert"], tok)
        save_tiny_vision(paths["vision"], image_size=image_size)
        save_tiny_llm(paths["opt"], "opt")
        save_tiny_llm(paths["t5"], "t5")
    return paths


def pretrain_llm(path: str, texts: list[str], out: str, steps: int = 300, lr: float = 3e-3, batch: int = 16,
                 seq_len: int = 48, seed: int = 0) -> float:
    """Pretrain a tiny LLM on caption text and save it (``save_pretrained``) for frozen use in stage 2.

    Decoder-only: captions ("\\n"-terminated) packed into ``seq_len``-token sequences, so the position
    embeddings are trained beyond one caption's length (stage 2 puts 32 soft tokens in front of the text).
    Encoder-decoder: prefix -> suffix at a random word split, as stage 2 uses it. Returns the last loss.
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(path)
    cfg_model = AutoModelForSeq2SeqLM if "t5" in open(os.path.join(path, "config.json")).read() else None
    model = (cfg_model or AutoModelForCausalLM).from_pretrained(path).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        if cfg_model is None:
            stream: list[int] = []
            while len(stream) < batch * seq_len:
                stream += tok(rng.choice(texts) + "\n").input_ids
            ids = torch.tensor(stream[: batch * seq_len]).view(batch, seq_len)
            loss = model(input_ids=ids, labels=ids).loss
        else:
            pre, suf = [], []
            for t in rng.choices(texts, k=batch):
                w = t.split()
                k = rng.randint(1, max(1, len(w) // 2)) if len(w) > 1 else 0
                pre.append(" ".join(w[:k]))
                suf.append(" ".join(w[k:]))
            p = tok(pre, padding=True, return_tensors="pt")
            s = tok(suf, padding=True, return_tensors="pt")
            labels = s.input_ids.masked_fill(s.attention_mask == 0, -100)
            loss = model(input_ids=p.input_ids, attention_mask=p.attention_mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return float(loss.detach())


def pretrain_vision(samples: list[dict], out: str, image_size: int = 64, patch: int = 8, hidden: int = 64,
                    layers: int = 4, heads: int = 4, steps: int = 300, batch: int = 64, lr: float = 2e-3,
                    seed: int = 0) -> dict[str, float]:
    """Pretrain a tiny ``Blip2VisionModel`` on attribute classification (main object's colour and shape, and the
    number of objects) from synthetic samples ({'jpg', 'json'}), then ``save_pretrained`` it: the stand-in for a
    released image encoder. The heads read the pooled [CLS] output (attention pooling: a mean over patches blurs
    the main object's shape with the others'). The last tenth of ``samples`` is held out; returns the accuracies
    on it."""
    import json as _json
    import random

    import torch
    import torch.nn.functional as F

    from demo.synthetic import COLOURS, SHAPES
    from pipeline.images import to_pixel_values

    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg = Blip2VisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=image_size, patch_size=patch, initializer_range=0.02)
    model = Blip2VisionModel(cfg).train()
    colours, shapes = list(COLOURS), SHAPES
    metas = [s["json"] if isinstance(s["json"], dict) else _json.loads(s["json"]) for s in samples]
    pix = to_pixel_values([s["jpg"] for s in samples], image_size)
    y_col = torch.tensor([colours.index(m["objects"][0]["colour"]) for m in metas])
    y_shp = torch.tensor([shapes.index(m["objects"][0]["shape"]) for m in metas])
    y_num = torch.tensor([len(m["objects"]) - 1 for m in metas])
    heads_ = torch.nn.Linear(hidden, len(colours) + len(shapes) + 3)
    opt = torch.optim.AdamW([*model.parameters(), *heads_.parameters()], lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    n_train = len(samples) - len(samples) // 10

    def heads_for(idx):
        return heads_(model(pixel_values=pix[idx]).pooler_output).split([len(colours), len(shapes), 3], -1)

    for _ in range(steps):
        idx = torch.tensor(rng.sample(range(n_train), min(batch, n_train)))
        lc, ls, ln = heads_for(idx)
        loss = F.cross_entropy(lc, y_col[idx]) + F.cross_entropy(ls, y_shp[idx]) + F.cross_entropy(ln, y_num[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        idx = torch.arange(n_train, len(samples))
        lc, ls, ln = heads_for(idx)
    model.save_pretrained(out)
    return {"colour": float((lc.argmax(-1) == y_col[idx]).float().mean()),
            "shape": float((ls.argmax(-1) == y_shp[idx]).float().mean()),
            "count": float((ln.argmax(-1) == y_num[idx]).float().mean()), "held_out": len(idx)}


# The tiny Q-Former recipe (tests, benches, configs/stage1_tiny.yaml): written here once.
TINY_QFORMER = dict(num_query_tokens=8, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, embed_dim=16,
                    max_txt_len=16, max_position_embeddings=64, dropout=0.1)


def tiny_qformer(zoo: dict[str, str], **overrides) -> QFormerConfig:
    """The ``tiny`` Q-Former over the tiny zoo (:func:`build_tiny_zoo`)."""
    base = dict(tokenizer=zoo["bert"], bert_init=zoo["bert"], **TINY_QFORMER)
    return QFormerConfig(**{**base, **overrides})


def tiny_stage1(zoo: dict[str, str], **overrides):
    from pipeline.models.stage1 import Stage1ModelConfig
    from pipeline.models.vision import VisionConfig

    return Stage1ModelConfig(vision=VisionConfig(name_or_path=zoo["vision"], dtype="fp32"),
                             qformer=tiny_qformer(zoo, **overrides))


def tiny_stage2(zoo: dict[str, str], llm: str = "opt", **overrides):
    from pipeline.models.stage2 import LLMConfig, Stage2ModelConfig
    from pipeline.models.vision import VisionConfig

    return Stage2ModelConfig(vision=VisionConfig(name_or_path=zoo["vision"], dtype="fp32"),
                             qformer=tiny_qformer(zoo, bert_init=None, **overrides),
                             llm=LLMConfig(name_or_path=zoo[llm], dtype="fp32"), max_txt_len=16)


if __name__ == "__main__":  # python -m demo.tiny_zoo --out outputs/zoo  (what configs/*_tiny.yaml point at)
    import argparse

    ap = argparse.ArgumentParser(description="write the tiny model zoo")
    ap.add_argument("--out", default="outputs/zoo")
    ap.add_argument("--image-size", type=int, default=32)
    ns = ap.parse_args()
    print(build_tiny_zoo(ns.out, image_size=ns.image_size))
