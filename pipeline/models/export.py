"""To and from transformers' BLIP-2 layouts.

Stage 2 -> ``Blip2ForConditionalGeneration`` (config, safetensors, ``Blip2Processor`` with ``<image>`` tokens).
Stage 1 -> ``Blip2ForImageTextRetrieval`` (+ ``blip2_ray_stage1_extras.safetensors`` holding what that class has
no place for: the ITG LM head and the ITC temperature, which transformers' converter drops).
The way back (a model from such a folder): pipeline/models/from_transformers.py.
"""

from __future__ import annotations

import copy

from safetensors.torch import save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    Blip2VisionModel,
    BlipImageProcessor,
)

from pipeline.images import CLIP_MEAN, CLIP_STD  # noqa: E402
from pipeline.models.qformer import QFormer
from pipeline.models.stage2 import Blip2Stage2
from pipeline.models.vision import FrozenVisionEncoder

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
