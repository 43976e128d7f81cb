"""Starting a model from a transformers BLIP-2 folder: a released checkpoint (``Salesforce/blip2-opt-2.7b``,
``Salesforce/blip2-itm-vit-g``) or one of our exports (pipeline/models/export.py), local, s3:// or a hub id.

The model config names the folder as its image encoder (and LLM), which load only their own tensors from it
(``vision_model.*``, ``language_model.*``), and takes the Q-Former's shape from the folder's config; the rest
(Q-Former, ``ln_vision``, projections, heads) is read under transformers' names and renamed to ours. A checkpoint
of a model started this way records the folder in its ``model.yaml``, so it reloads, resumes and exports alone.
"""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file
from transformers import Blip2Config

from pipeline.models.export import EXTRAS  # what Blip2ForImageTextRetrieval has no place for
from pipeline.models.loading import resolve
from pipeline.models.tensor_files import checkpoint_file, files_with_prefix, read_tensors

# transformers' name prefix -> ours; the image encoder's and LLM's own tensors are loaded by their loaders
RENAMES = (
    ("query_tokens", "qformer.query_tokens"),
    ("qformer.", "qformer.qformer."),
    ("embeddings.", "qformer.embeddings."),
    ("vision_model.post_layernorm.", "vision.ln_vision."),
    ("vision_projection.", "vision_proj."),
    ("text_projection.", "text_proj."),
    ("itm_head.", "itm_head."),
    ("language_projection.", "language_projection."),
)
EXTRAS_RENAMES = (("lm_head.", "qformer.lm_head."), ("temp", "temp"))


def folder_config(path: str, expected_class: str) -> Blip2Config:
    """The folder's Blip2Config, after checking that it was saved from ``expected_class``."""
    local = resolve(path)
    cfg = Blip2Config.from_pretrained(local)
    saved = (cfg.architectures or ["(none)"])[0]
    if saved != expected_class:
        raise ValueError(f"{path}/config.json: architectures names {saved}; this model starts from a "
                         f"{expected_class} folder")
    return cfg


def model_config(path: str, base, hf_class: str):
    """A copy of ``base`` (a Stage1ModelConfig or Stage2ModelConfig, plain or OmegaConf) whose image encoder,
    LLM and Q-Former come from the folder; dtypes, prompts, fine-tuning switches and ``max_txt_len`` stay."""
    hf = folder_config(path, hf_class)
    cfg = copy.deepcopy(base)
    cfg.vision.name_or_path = path
    cfg.vision.drop_last_layer = False  # a BLIP-2 folder's tower is already cut to the second-to-last block
    qc, q = hf.qformer_config, cfg.qformer
    q.num_query_tokens, q.hidden_size = hf.num_query_tokens, qc.hidden_size
    q.num_layers, q.num_heads, q.intermediate_size = qc.num_hidden_layers, qc.num_attention_heads, qc.intermediate_size
    q.cross_attention_freq, q.max_position_embeddings = qc.cross_attention_frequency, qc.max_position_embeddings
    q.dropout, q.initializer_range = qc.hidden_dropout_prob, qc.initializer_range
    q.embed_dim = hf.image_text_hidden_size
    if hf_class == "Blip2ForImageTextRetrieval":
        q.tokenizer, q.bert_init = path, None  # the Q-Former's own tokenizer and text weights are in the folder
    else:
        cfg.llm.name_or_path = path
    return cfg


def _rename(key: str, renames) -> str | None:
    for theirs, ours in renames:
        if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
            return ours + key[len(theirs):]
    return None


def folder_state(path: str) -> dict[str, torch.Tensor]:
    """The folder's Q-Former, ``ln_vision``, projections and heads under our names (fp32); of a sharded
    checkpoint only the shards holding them are opened (or downloaded, for a hub id)."""
    local = resolve(path)
    state = {}
    for theirs, _ in RENAMES:
        for file, keys in files_with_prefix(local, theirs).items():
            keys = [k for k in keys if _rename(k, RENAMES) is not None]
            state.update({_rename(k, RENAMES): v for k, v in read_tensors(file, keys, torch.float32).items()})
    extras = checkpoint_file(local, EXTRAS)
    if extras is not None:
        for k, v in load_file(extras).items():
            if _rename(k, EXTRAS_RENAMES) is not None:
                state[_rename(k, EXTRAS_RENAMES)] = v.float()
        if "temp" in state:
            state["temp"] = state["temp"].reshape(1)
    return state


def load_folder_state(model: torch.nn.Module, path: str) -> list[str]:
    """Load :func:`folder_state` into ``model``: every tensor must have a place of its shape, and the Q-Former
    must be there. Returns the model's trainable weights the folder did not have (they keep their initial
    values: e.g. the ITG head and temperature of a released retrieval folder, or the Q-Former's text embeddings
    when a VQA fine-tune starts from a Blip2ForConditionalGeneration folder)."""
    state = folder_state(path)
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            raise KeyError(f"{path}: tensor for {k!r} has no place in {type(model).__name__}")
        if own[k].shape != v.shape:
            raise ValueError(f"{path}: tensor for {k!r} has shape {tuple(v.shape)}, the model's is "
                             f"{tuple(own[k].shape)}")
    if "qformer.query_tokens" not in state:
        raise KeyError(f"{path}: no query_tokens, so no Q-Former to start from")
    model.load_state_dict(state, strict=False)
    return sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in state
                  and not n.startswith(("vision.tower.", "llm.")))


def from_folder(new_model, path: str, base, hf_class: str):
    """A model from a ``hf_class`` folder: ``new_model`` builds it (a stage's) from ``base`` with the folder's
    parts (:func:`model_config`), then the folder's weights are loaded (:func:`load_folder_state`)."""
    model = new_model(model_config(path, base, hf_class))
    fresh = load_folder_state(model, path)
    if fresh:
        print(f"[init_from_hf] {path}: {len(fresh)} trainable weights not in the folder start fresh, e.g. "
              f"{fresh[:3]}", flush=True)
    return model


def stage1_from_hf(path: str, vision_dtype: str = "fp32", max_txt_len: int = 32):
    """A :class:`Blip2Stage1` from a ``Blip2ForImageTextRetrieval`` folder (released, or written by export)."""
    from pipeline.models.qformer import QFormerConfig
    from pipeline.models.stage1 import Blip2Stage1, Stage1ModelConfig
    from pipeline.models.vision import VisionConfig

    base = Stage1ModelConfig(vision=VisionConfig(dtype=vision_dtype), qformer=QFormerConfig(max_txt_len=max_txt_len))
    return from_folder(Blip2Stage1, path, base, "Blip2ForImageTextRetrieval")


def stage2_from_hf(path: str, vision_dtype: str = "fp32", llm_dtype: str = "fp32"):
    """A :class:`Blip2Stage2` from a ``Blip2ForConditionalGeneration`` folder (released, or written by export)."""
    from pipeline.models.stage2 import Blip2Stage2, LLMConfig, Stage2ModelConfig
    from pipeline.models.vision import VisionConfig

    base = Stage2ModelConfig(vision=VisionConfig(dtype=vision_dtype), llm=LLMConfig(dtype=llm_dtype))
    return from_folder(Blip2Stage2, path, base, "Blip2ForConditionalGeneration")
