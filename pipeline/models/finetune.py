"""The paper's three fine-tuning recipes as model configs over the pretrained parts (BLIP-2 §4, appendix).

* ``caption``: stage-2 model, LM loss with the prompt "a photo of" (not a target), image encoder trained at 364 px
  with gradient checkpointing, LLM frozen; Flan-T5 reads only the prompt and predicts the whole caption.
* ``vqa``: stage-2 model whose Q-Former also reads the question (with the queries); the LLM reads
  "Question: {} Answer:" (OPT) / "Question: {} Short answer:" (Flan-T5); loss on the answer tokens only.
* ``retrieval``: stage-1 model (ITC + ITM + ITG) with the image encoder trained at 364 px.

Each returns a copy of the given pretraining config with the recipe's changes; the training settings (lr 1e-5,
warmup, layer decay, epochs, batch) are in configs/finetune_*.yaml.
"""

from __future__ import annotations

import copy

RECIPES = ("caption", "vqa", "retrieval")
CAPTION_PROMPT = "a photo of"  # LAVIS caption_coco_ft: the processor prepends "a photo of ", the model masks it
FINETUNE_IMAGE_SIZE = {"caption": 364, "vqa": 490, "retrieval": 364}  # paper appendix / LAVIS yamls


def _unfreeze(vision, image_size: int, grad_checkpointing: bool):
    vision.trainable = True
    vision.image_size = image_size
    vision.grad_checkpointing = grad_checkpointing
    if vision.dtype == "fp16":  # a trained fp16 tower has no loss scaling (LAVIS #409); LAVIS fine-tunes it in fp32
        vision.dtype = "fp32"


def recipe_model_config(recipe: str, base, image_size: int | None = None, grad_checkpointing: bool = True):
    """``base``: a Stage2ModelConfig (caption, vqa) or Stage1ModelConfig (retrieval)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {RECIPES}")
    cfg = copy.deepcopy(base)
    _unfreeze(cfg.vision, image_size if image_size is not None else FINETUNE_IMAGE_SIZE[recipe], grad_checkpointing)
    if recipe == "caption":
        cfg.prompt = CAPTION_PROMPT
        cfg.prefix_split = False
    elif recipe == "vqa":
        cfg.prompt = ""
        cfg.qformer_text_input = True
    return cfg
