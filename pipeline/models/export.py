"""To and from transformers' BLIP-2 layouts.

Stage 2 -> ``Blip2ForConditionalGeneration`` (config, safetensors, ``Blip2Processor`` with ``<image>`` tokens).
Stage 1 -> ``Blip2ForImageTextRetrieval`` (+ ``blip2_ray_stage1_extras.safetensors`` holding what that class has
no place for: the ITG LM head and the ITC temperature, which transformers' converter drops).
An existing ``Blip2ForConditionalGeneration`` folder (such as a released checkpoint) can seed a stage-2 model.
"""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    Blip2VisionModel,
    BlipImageProcessor,
)

from pipeline.images import CLIP_MEAN, CLIP_STD  # noqa: E402
from pipeline.models.loading import resolve
from pipeline.models.qformer import QFormer, QFormerConfig, load_tokenizer
from pipeline.models.stage2 import Blip2Stage2, LLMConfig, Stage2ModelConfig
from pipeline.models.vision import FrozenVisionEncoder, VisionConfig

EXTRAS = "blip2_ray_stage1_extras.safetensors"


def vision_state(vision: FrozenVisionEncoder) -> tuple[dict, dict]:
    if not isinstance(vision.tower, Blip2VisionModel):
        raise ValueError(f"export needs a Blip2VisionModel (EVA ViT-g shaped) tower, got {type(vision.tower).__name__}: "
                         "transformers' Blip2 classes cannot represent it (e.g. CLIP ViT-L has ln_pre/QuickGELU)")
    sd = {f"vision_model.{k}": v.float() for k, v in vision.tower.state_dict().items()}
    sd.update({f"vision_model.post_layernorm.{k}": v.float() for k, v in vision.ln_vision.state_dict().items()})
    return sd, vision.tower.config.to_dict()


def qformer_state(q: QFormer) -> dict:
    sd = {"query_tokens": q.query_tokens.detach().float()}
    sd.update({f"qformer.{k}": v for k, v in q.qformer.state_dict().items()})
    return sd


def image_processor(size: int) -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": size, "width": size}, image_mean=CLIP_MEAN.tolist(), image_std=CLIP_STD.tolist(),
                              do_convert_rgb=True)


def llm_state(model: Blip2Stage2) -> tuple[dict, object, int, dict]:
    """The projection and the full LLM under transformers' names, the LLM tokenizer with ``<image>`` added, that
    token's id and the LLM config (shared by the BLIP-2 and InstructBLIP exports)."""
    sd = {f"language_projection.{k}": v for k, v in model.language_projection.state_dict().items()}
    tok = copy.deepcopy(model.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    llm = model.llm
    if image_id >= llm.get_input_embeddings().weight.shape[0]:  # make the embedding cover <image> (rarely needed)
        llm = copy.deepcopy(llm)
        llm.resize_token_embeddings(image_id + 1)
    sd.update({f"language_model.{k}": v.float() for k, v in llm.state_dict().items()})
    return sd, tok, image_id, llm.config.to_dict()


def export_stage2(model: Blip2Stage2, out_dir: str) -> str:
    """Save ``model`` as a ``Blip2ForConditionalGeneration`` folder (fp32 weights, processor included)."""
    if model.cfg.qformer_text_input:
        raise ValueError("a model whose Q-Former reads the question (model.qformer_text_input, VQA fine-tuning) "
                         "has no Blip2ForConditionalGeneration form: export it with export_finetune.export_vqa")
    sd, vision_cfg = vision_state(model.vision)
    sd.update(qformer_state(model.qformer))
    llm_sd, tok, image_id, text_config = llm_state(model)
    sd.update(llm_sd)
    qcfg = model.qformer.hf_config.to_dict()
    config = Blip2Config(vision_config=vision_cfg, qformer_config=qcfg, text_config=text_config,
                         num_query_tokens=model.qformer.num_query, image_token_index=image_id)
    hf = Blip2ForConditionalGeneration(config)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the input embeddings
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf.save_pretrained(out_dir)
    Blip2Processor(image_processor(model.vision.image_size), tok, num_query_tokens=model.qformer.num_query
                   ).save_pretrained(out_dir)
    return out_dir


def export_stage1(model, out_dir: str) -> str:
    """Save a :class:`Blip2Stage1` as a ``Blip2ForImageTextRetrieval`` folder."""
    sd, vision_cfg = vision_state(model.vision)
    q = model.qformer
    sd.update(qformer_state(q))
    sd.update({f"embeddings.{k}": v for k, v in q.embeddings.state_dict().items()})
    for ours, theirs in (("vision_proj", "vision_projection"), ("text_proj", "text_projection"), ("itm_head", "itm_head")):
        sd.update({f"{theirs}.{k}": v for k, v in getattr(model, ours).state_dict().items()})
    config = Blip2Config(vision_config=vision_cfg, qformer_config=q.hf_config.to_dict(),
                         num_query_tokens=q.num_query, image_text_hidden_size=model.cfg.qformer.embed_dim)
    hf = Blip2ForImageTextRetrieval(config)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf.save_pretrained(out_dir)
    # Tokenizer and image processor saved side by side (Blip2Processor.from_pretrained reads both); going through
    # Blip2Processor itself would add an <image> token that the retrieval class does not use.
    model.tokenizer.save_pretrained(out_dir)
    image_processor(model.vision.image_size).save_pretrained(out_dir)
    extras = {f"lm_head.{k}": v.detach().contiguous() for k, v in q.lm_head.state_dict().items()}
    extras["temp"] = model.temp.detach().reshape(1).contiguous()
    save_file(extras, f"{out_dir}/{EXTRAS}")
    return out_dir


def _qformer_cfg_from_hf(config: Blip2Config, max_txt_len: int = 32) -> QFormerConfig:
    qc = config.qformer_config
    return QFormerConfig(tokenizer="", bert_init=None, num_query_tokens=config.num_query_tokens,
                         hidden_size=qc.hidden_size, num_layers=qc.num_hidden_layers, num_heads=qc.num_attention_heads,
                         intermediate_size=qc.intermediate_size, cross_attention_freq=qc.cross_attention_frequency,
                         max_position_embeddings=qc.max_position_embeddings, dropout=qc.hidden_dropout_prob,
                         embed_dim=config.image_text_hidden_size, max_txt_len=max_txt_len,
                         initializer_range=qc.initializer_range)


def _vision_from_hf(vision_model: Blip2VisionModel, dtype: str) -> FrozenVisionEncoder:
    ln = copy.deepcopy(vision_model.post_layernorm.state_dict())
    enc = FrozenVisionEncoder(vision_model, VisionConfig(name_or_path="", drop_last_layer=False, dtype=dtype))
    enc.ln_vision.load_state_dict(ln)
    return enc


def stage2_from_hf(path: str, vision_dtype: str = "fp32", llm_dtype: str = "fp32", prompt: str = "",
                   max_txt_len: int = 32) -> Blip2Stage2:
    """Build a stage-2 model from a ``Blip2ForConditionalGeneration`` folder (hub id, local or s3://)."""
    local = resolve(path)
    hf = Blip2ForConditionalGeneration.from_pretrained(local, dtype=torch.float32)
    processor = Blip2Processor.from_pretrained(local)
    cfg = Stage2ModelConfig(vision=VisionConfig(name_or_path=path, drop_last_layer=False, dtype=vision_dtype),
                            qformer=_qformer_cfg_from_hf(hf.config, max_txt_len),
                            llm=LLMConfig(name_or_path=path, dtype=llm_dtype), prompt=prompt, max_txt_len=max_txt_len)
    model = Blip2Stage2(cfg, vision=_vision_from_hf(hf.vision_model, vision_dtype), llm=hf.language_model,
                        llm_tokenizer=processor.tokenizer)
    model.qformer.query_tokens.data.copy_(hf.query_tokens.data)
    model.qformer.qformer.load_state_dict(hf.qformer.state_dict())
    model.language_projection.load_state_dict(hf.language_projection.state_dict())
    return model


def stage1_from_hf(path: str, vision_dtype: str = "fp32", max_txt_len: int = 32):
    """Rebuild a :class:`Blip2Stage1` from a folder written by :func:`export_stage1`."""
    from pipeline.models.stage1 import Blip2Stage1, Stage1ModelConfig

    local = resolve(path)
    hf = Blip2ForImageTextRetrieval.from_pretrained(local, dtype=torch.float32)
    tok = load_tokenizer(local)
    qcfg = _qformer_cfg_from_hf(hf.config, max_txt_len)
    cfg = Stage1ModelConfig(vision=VisionConfig(name_or_path=path, drop_last_layer=False, dtype=vision_dtype),
                            qformer=qcfg)
    model = Blip2Stage1(cfg, vision=_vision_from_hf(hf.vision_model, vision_dtype), tokenizer=tok)
    q = model.qformer
    q.query_tokens.data.copy_(hf.query_tokens.data)
    q.qformer.load_state_dict(hf.qformer.state_dict())
    q.embeddings.load_state_dict(hf.embeddings.state_dict())
    model.vision_proj.load_state_dict(hf.vision_projection.state_dict())
    model.text_proj.load_state_dict(hf.text_projection.state_dict())
    model.itm_head.load_state_dict(hf.itm_head.state_dict())
    # A released folder (e.g. Salesforce/blip2-itm-vit-g) has no extras: ITC and ITM are complete without them,
    # only the ITG head stays untrained and the temperature at its initial value.
    if os.path.exists(f"{local}/{EXTRAS}"):
        extras = load_file(f"{local}/{EXTRAS}")
        q.lm_head.load_state_dict({k[len("lm_head."):]: v for k, v in extras.items() if k.startswith("lm_head.")})
        model.temp.data.copy_(extras["temp"][0])
    return model
