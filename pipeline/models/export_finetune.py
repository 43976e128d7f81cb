"""Exports of the fine-tuned models, with each recipe's generation settings in the folder's generation config.

* captioning -> ``Blip2ForConditionalGeneration`` (beam 5, 8 to 30 new tokens, stop at "\\n" for OPT). Blip2 and
  InstructBLIP hand generate kwargs to the LLM only, so pass ``generation_config=model.generation_config``;
* VQA -> ``InstructBlipForConditionalGeneration``: its Q-Former reads the question with the queries, which
  ``Blip2ForConditionalGeneration`` cannot (its Q-Former takes only the queries). InstructBLIP's Q-Former is the
  same network (word + position embeddings, one LayerNorm over [queries; text], text and query FFNs), so the
  mapping is exact. Beam 5, up to 10 new tokens, length penalty -1 (paper, zero-shot VQA);
* retrieval -> ``Blip2ForImageTextRetrieval`` (:func:`pipeline.models.export.export_stage1`).
"""

from __future__ import annotations

from transformers import (
    GenerationConfig,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
)

from pipeline.models.export import (
    export_stage1,
    export_stage2,
    image_processor,
    llm_state,
    qformer_state,
    vision_state,
)
from pipeline.models.stage2 import Blip2Stage2

CAPTION_GENERATION = {"num_beams": 5, "max_new_tokens": 30, "min_new_tokens": 8}  # paper / LAVIS caption_coco_ft
VQA_GENERATION = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}


def eos_ids(model: Blip2Stage2) -> list[int]:
    """What generation stops at: ``</s>``, and "\\n" for a decoder-only LLM (captions are "\\n"-terminated)."""
    return [model.tokenizer.eos_token_id] + ([model.newline_id] if model.newline_id is not None else [])


def _write_generation(model: Blip2Stage2, out_dir: str, settings: dict) -> None:
    gen = GenerationConfig(**settings, eos_token_id=eos_ids(model), pad_token_id=model.tokenizer.pad_token_id,
                           do_sample=False)
    gen.save_pretrained(out_dir)


def export_caption(model: Blip2Stage2, out_dir: str) -> str:
    export_stage2(model, out_dir)
    _write_generation(model, out_dir, CAPTION_GENERATION)
    return out_dir


def export_vqa(model: Blip2Stage2, out_dir: str) -> str:
    """Save a VQA model (``model.qformer_text_input``) as an ``InstructBlipForConditionalGeneration`` folder."""
    if not model.cfg.qformer_text_input:
        raise ValueError("export_vqa needs a model whose Q-Former reads the question (model.qformer_text_input)")
    sd, vision_cfg = vision_state(model.vision)
    for k, v in qformer_state(model.qformer).items():  # InstructBLIP keeps the [queries; text] LayerNorm in embeddings
        sd[k.replace("qformer.layernorm.", "qformer.embeddings.layernorm.")] = v
    sd.update({f"qformer.embeddings.{k}": v for k, v in model.qformer.embeddings.state_dict().items()
               if not k.endswith("position_ids")})
    llm_sd, tok, image_id, text_config = llm_state(model)
    sd.update(llm_sd)
    qcfg = {k: v for k, v in model.qformer.hf_config.to_dict().items() if k != "use_qformer_text_input"}
    config = InstructBlipConfig(vision_config=vision_cfg, qformer_config=qcfg, text_config=text_config,
                                num_query_tokens=model.qformer.num_query, image_token_index=image_id)
    hf = InstructBlipForConditionalGeneration(config)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("lm_head.weight", "position_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"VQA export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf.save_pretrained(out_dir)
    InstructBlipProcessor(image_processor(model.vision.image_size), tok, model.qformer_tokenizer,
                          num_query_tokens=model.qformer.num_query).save_pretrained(out_dir)
    _write_generation(model, out_dir, VQA_GENERATION)
    return out_dir


EXPORTS = {"caption": export_caption, "vqa": export_vqa, "retrieval": export_stage1}
