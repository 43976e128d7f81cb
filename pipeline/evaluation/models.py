"""Any model for evaluation: a checkpoint of jobs/stage1.py / stage2.py, a folder exported by jobs/export.py, or a
released transformers folder (``Blip2ForImageTextRetrieval`` for retrieval, ``Blip2ForConditionalGeneration`` for
captioning and VQA), local, s3:// or a hub id."""

from __future__ import annotations

import json

from pipeline import storage
from pipeline.models.loading import resolve

ARCHITECTURES = {1: "Blip2ForImageTextRetrieval", 2: "Blip2ForConditionalGeneration"}
PURPOSE = {1: "retrieval (a stage-1 model)", 2: "captioning / VQA (a stage-2 model)"}


def _architectures(uri: str) -> list[str]:
    import os

    local = resolve(uri)
    path = os.path.join(local, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get("architectures") or []
    from transformers import AutoConfig  # a hub id: the config through the hub cache

    return AutoConfig.from_pretrained(local).architectures or []


def load_model(uri: str, stage: int, dtype: str = "fp32"):
    """The stage-``stage`` model at ``uri`` in eval mode; ``dtype`` applies to the frozen parts of folders."""
    from pipeline.checkpoint import is_complete
    from pipeline.models.from_transformers import stage1_from_hf, stage2_from_hf
    from pipeline.stages import load_model as load_checkpoint

    if storage.exists(storage.join(uri, "COMPLETE")) and is_complete(uri):
        got, model = load_checkpoint(uri)
        # By the class the stage exports to, so that any recipe producing such a model (fine-tuning) evaluates too.
        if got.hf_class != ARCHITECTURES[stage]:
            raise ValueError(f"{uri} is a {got.name} checkpoint ({got.hf_class}); {PURPOSE[stage]} is needed here")
        return model.eval()
    arch = _architectures(uri)
    if ARCHITECTURES[stage] not in arch:
        raise ValueError(f"{uri}: config.json architectures {arch}, but {PURPOSE[stage]} needs a checkpoint or a "
                         f"{ARCHITECTURES[stage]} folder")
    if stage == 1:
        return stage1_from_hf(uri, vision_dtype=dtype, max_txt_len=35).eval()
    return stage2_from_hf(uri, vision_dtype=dtype, llm_dtype=dtype).eval()
