"""The frozen LLM of stage 2: from its own folder (``facebook/opt-2.7b``, ``google/flan-t5-xl``) or out of a whole
BLIP-2 folder (a released ``Blip2ForConditionalGeneration`` or one of our exports), reading only its
``language_model.*`` tensors."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from pipeline.models.loading import resolve
from pipeline.models.tensor_files import files_with_prefix, read_tensors


def exact_gelu(cfg):
    """The LLM's config as the reference loads it: Flan-T5's gated FFN with exact GELU.

    Flan-T5's config says ``gated-gelu``, which transformers maps to ``gelu_new`` (the tanh approximation). LAVIS
    (blip2_t5.py) and transformers' BLIP-2 conversion set ``dense_act_fn="gelu"`` before loading, and the released
    BLIP-2 T5 checkpoints were trained that way (the tanh form moves the logits by ~4e-3 on Flan-T5-XL).
    """
    if cfg.model_type == "t5" and getattr(cfg, "dense_act_fn", None) == "gelu_new":
        cfg.dense_act_fn = "gelu"
    return cfg


def llm_config(path: str):
    """The config of the LLM at ``path`` (a local folder or hub id), the text config of a BLIP-2 folder."""
    cfg = AutoConfig.from_pretrained(path)
    return exact_gelu(cfg.text_config if cfg.model_type == "blip-2" else cfg)


def _model_class(cfg):
    return AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM


def load_blip2_llm(folder: str, dtype: torch.dtype) -> nn.Module:
    """The ``language_model`` of a whole BLIP-2 folder, built on the meta device and filled from its
    ``language_model.*`` tensors only (the ViT and Q-Former are never read), cast to ``dtype`` as they are read."""
    prefix = "language_model."
    cfg = llm_config(folder)
    with torch.device("meta"):
        llm = _model_class(cfg).from_config(cfg, dtype=dtype)
    state = {}
    for path, keys in files_with_prefix(folder, prefix).items():
        state.update({k[len(prefix):]: v for k, v in read_tensors(path, keys, dtype).items()})
    expected = set(llm.state_dict())
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise KeyError(f"{folder}: unexpected LLM tensor {prefix}{unexpected[0]} for {type(llm).__name__}")
    llm.load_state_dict(state, strict=False, assign=True)
    llm.tie_weights()  # save_pretrained leaves out a head tied to the input embeddings
    missing = sorted(n for n, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta)
    if missing:
        raise KeyError(f"{folder}: the checkpoint lacks {len(missing)} LLM tensors, e.g. {prefix}{missing[0]}")
    return llm


def load_llm(name_or_path: str, dtype: torch.dtype) -> nn.Module:
    """The LLM named by a stage-2 config, in ``dtype``."""
    path = resolve(name_or_path)
    if AutoConfig.from_pretrained(path).model_type == "blip-2":
        return load_blip2_llm(path, dtype)
    cfg = llm_config(path)
    return _model_class(cfg).from_pretrained(path, config=cfg).to(dtype)
