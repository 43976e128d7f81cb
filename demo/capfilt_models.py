"""CapFilt's default model classes, built locally (no hub): a BLIP captioner (``BlipForConditionalGeneration``)
and a CLIP filter (``CLIPModel``), random init, with locally built tokenizers and image processors, each saved
with ``save_pretrained`` so that dataprep/capfilt.py loads them through ``AutoProcessor`` / ``from_pretrained``
exactly as it loads Salesforce/blip-image-captioning-large and openai/clip-vit-large-patch14.

``size="paper"`` gives those checkpoints' architectures (ViT-L/16 at 384 px + a 12-layer BERT-base decoder;
ViT-L/14 at 224 px + a 12-layer 768-wide text tower) and vocabulary sizes (30,524; 49,408): the GPU throughput
bench needs their compute, not their weights. ``size="tiny"`` gives the same classes at toy width for CPU tests.
Random weights never predict the end token, so every caption runs to ``max_length``: the bench's captioner
figures are the worst case (a real captioner stops a batch once all its sequences have ended).
"""

from __future__ import annotations

import os

from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from demo.tiny_zoo import corpus

# OpenAI CLIP's normalisation, which both BLIP and CLIP processors use
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

SIZES = {
    # vision: hidden, layers, heads, mlp, image, patch; text: hidden, layers, heads, mlp
    "paper": {"blip": ((1024, 24, 16, 4096, 384, 16), (768, 12, 12, 3072)),
              "clip": ((1024, 24, 16, 4096, 224, 14), (768, 12, 12, 3072)), "projection": 768},
    "tiny": {"blip": ((32, 2, 2, 64, 64, 16), (32, 2, 2, 64)),
             "clip": ((32, 2, 2, 64, 32, 8), (32, 2, 2, 64)), "projection": 32},
}
BLIP_VOCAB, CLIP_VOCAB = 30524, 49408  # the paper checkpoints' vocabularies (BERT + [DEC], [ENC]; CLIP's BPE)


def _words() -> list[str]:
    return sorted({w for line in corpus() for w in line.lower().split()})


def blip_tokenizer(size: str) -> BertTokenizer:
    """BERT WordPiece over every character and the demo's words, padded with unused tokens to BERT's 30,522
    (paper size), plus BLIP's ``[DEC]`` (its BOS) and ``[ENC]``."""
    import string

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars]]
    tokens = base + [w for w in _words() if w not in set(base)]
    if size == "paper":
        tokens += [f"[unused{i}]" for i in range(BLIP_VOCAB - 2 - len(tokens))]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def clip_tokenizer(size: str) -> CLIPTokenizer:
    """Byte-level BPE with CLIP's specials: the 256 byte symbols, each also as a word end (``</w>``), merges
    that spell the demo's words, and (paper size) filler tokens up to CLIP's 49,408."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = []
    for w in _words():
        cur = w[0]
        for i, ch in enumerate(w[1:], 1):
            nxt = ch + "</w>" if i == len(w) - 1 else ch
            if (cur, nxt) not in merges:
                merges.append((cur, nxt))
            cur += nxt
            if cur not in tokens:
                tokens.append(cur)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if size == "paper":
        tokens += [f"<|filler{i}|>" for i in range(CLIP_VOCAB - len(tokens))]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def _towers(kind: str, size: str, tok) -> tuple[dict, dict, int]:
    """(vision_config, text_config, image size) of the BLIP or CLIP preset."""
    (vh, vl, vn, vm, image, patch), (th, tl, tn, tm) = SIZES[size][kind]
    vision = {"hidden_size": vh, "num_hidden_layers": vl, "num_attention_heads": vn, "intermediate_size": vm,
              "image_size": image, "patch_size": patch}
    text = {"vocab_size": len(tok), "hidden_size": th, "num_hidden_layers": tl, "num_attention_heads": tn,
            "intermediate_size": tm, "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}
    return vision, text, image


def _save(model, processor, out: str, dtype) -> str:
    model = model.eval() if dtype is None else model.eval().to(dtype)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_blip_captioner(out: str, size: str = "tiny", dtype=None) -> str:
    tok = blip_tokenizer(size)
    vision, text, image = _towers("blip", size, tok)
    # BLIP decodes from [DEC] and ends at [SEP]; its cross-attention reads the ViT's width
    text.update(encoder_hidden_size=vision["hidden_size"], max_position_embeddings=512,
                sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text,
                                                    projection_dim=SIZES[size]["projection"]))
    images = BlipImageProcessor(size={"height": image, "width": image}, image_mean=MEAN, image_std=STD)
    return _save(model, BlipProcessor(image_processor=images, tokenizer=tok), out, dtype)


def save_clip_filter(out: str, size: str = "tiny", dtype=None) -> str:
    tok = clip_tokenizer(size)
    vision, text, image = _towers("clip", size, tok)
    text.update(max_position_embeddings=77, eos_token_id=tok.eos_token_id)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=SIZES[size]["projection"]))
    images = CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image},
                                image_mean=MEAN, image_std=STD)
    return _save(model, CLIPProcessor(image_processor=images, tokenizer=tok), out, dtype)


def save_capfilt_models(root: str, size: str = "tiny", dtype=None) -> tuple[str, str]:
    """(captioner path, filter path) under ``root``."""
    return (save_blip_captioner(os.path.join(root, "blip_captioner"), size, dtype),
            save_clip_filter(os.path.join(root, "clip_filter"), size, dtype))
