"""What differs between training stages, behind one interface; the training loop, checkpoints and exports
take a :class:`Stage` and never branch on which one it is.

A stage says how to build its model from a job config, how to rebuild it from a checkpoint's model config, how a
batch becomes model inputs, which losses train it, and which transformers class it exports to. A checkpoint's
``model.yaml`` records the stage's name, so a checkpoint reloads and exports without being told what it is.
New recipes (fine-tuning) register here the same way.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from pipeline import checkpoint as ckpt
from pipeline.config import merge
from pipeline.finetune_stages import FinetuneMixin, init_source, vqa_inputs
from pipeline.losses import stage1_losses, stage2_losses
from pipeline.optim import param_groups
from pipeline.storage import StorageConfig


class Stage:
    name: str
    hf_class: str  # the transformers class :meth:`export` writes
    init_class: str  # the transformers class whose folder ``init_from_hf`` starts from

    def job_config(self) -> type:
        raise NotImplementedError

    def model_config(self) -> type:
        raise NotImplementedError

    def new_model(self, model_cfg) -> torch.nn.Module:
        """The model from its own config (random or pretrained towers as the config names them)."""
        raise NotImplementedError

    def build(self, cfg) -> torch.nn.Module:
        """The model a training run starts from (a stage may initialise parts from elsewhere)."""
        return self.new_model(cfg.model)

    def inputs(self, model, batch: dict, device, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def losses(self, out) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def param_groups(self, model, cfg) -> list[dict]:
        """AdamW parameter groups (fine-tuning adds layer-wise lr decay over the image encoder)."""
        return param_groups(model, cfg.optim.weight_decay)

    def export(self, model, out_dir: str) -> None:
        raise NotImplementedError


class Stage1(Stage):
    """Q-Former against the frozen image encoder: ITC + ITM + ITG."""

    name, hf_class = "stage1", "Blip2ForImageTextRetrieval"
    init_class = "Blip2ForImageTextRetrieval"

    def job_config(self):
        from pipeline.train_config import Stage1JobConfig

        return Stage1JobConfig

    def model_config(self):
        from pipeline.models.stage1 import Stage1ModelConfig

        return Stage1ModelConfig

    def new_model(self, model_cfg):
        from pipeline.models.stage1 import Blip2Stage1

        return Blip2Stage1(model_cfg)

    def inputs(self, model, batch, device, rng):
        return {"pixel_values": batch["pixel_values"].to(device), **model.tokenize(batch["caption"], device=device)}

    def losses(self, out):
        return stage1_losses(out)

    def export(self, model, out_dir):
        from pipeline.models.export import export_stage1

        export_stage1(model, out_dir)


class Stage2(Stage):
    """Q-Former tied to a frozen LLM: language modelling (OPT) or prefix language modelling (Flan-T5)."""

    name, hf_class = "stage2", "Blip2ForConditionalGeneration"
    init_class = "Blip2ForConditionalGeneration"

    def job_config(self):
        from pipeline.train_config import Stage2JobConfig

        return Stage2JobConfig

    def model_config(self):
        from pipeline.models.stage2 import Stage2ModelConfig

        return Stage2ModelConfig

    def new_model(self, model_cfg):
        from pipeline.models.stage2 import Blip2Stage2

        return Blip2Stage2(model_cfg)

    def build(self, cfg):
        if init_source(cfg) == "hf":
            from pipeline.models.from_transformers import from_folder

            return from_folder(self.new_model, cfg.init_from_hf, cfg.model, self.init_class)
        model = self.new_model(cfg.model)
        if cfg.init_from:
            model.load_stage1(ckpt.load_state(cfg.init_from))
        return model

    def inputs(self, model, batch, device, rng):
        # rng: the prefix-LM split point of each caption (Flan-T5), seeded per step by the loop
        return {"pixel_values": batch["pixel_values"].to(device),
                **model.tokenize(batch["caption"], rng=rng, device=device)}

    def losses(self, out):
        return stage2_losses(out)

    def export(self, model, out_dir):
        from pipeline.models.export import export_stage2

        export_stage2(model, out_dir)


STAGES: dict[str, Stage] = {s.name: s for s in (Stage1(), Stage2())}
class CaptionStage(FinetuneMixin, Stage2):
    """Stage-2 model, LM loss after the prompt "a photo of", image encoder trained."""

    recipe, hf_class = "caption", "Blip2ForConditionalGeneration"

    def export(self, model, out_dir):
        from pipeline.models.export_finetune import export_caption

        export_caption(model, out_dir)


class VqaStage(FinetuneMixin, Stage2):
    """Stage-2 model whose Q-Former reads the question; loss on the answer tokens only."""

    recipe, hf_class = "vqa", "InstructBlipForConditionalGeneration"

    def inputs(self, model, batch, device, rng):
        return vqa_inputs(model, batch, device)

    def export(self, model, out_dir):
        from pipeline.models.export_finetune import export_vqa

        export_vqa(model, out_dir)


class RetrievalStage(FinetuneMixin, Stage1):
    """Stage-1 model (ITC + ITM + ITG), image encoder trained."""

    recipe = "retrieval"


STAGES.update({s.name: s for s in (CaptionStage(), VqaStage(), RetrievalStage())})  # fine-tuning recipes


def get_stage(name: str | int) -> Stage:
    """The stage called ``name``; 1 and 2 name stage1 and stage2 (checkpoints written before stages had names)."""
    key = f"stage{name}" if isinstance(name, int) else str(name)
    if key not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {sorted(STAGES)}")
    return STAGES[key]


def load_model(uri: str, storage_cfg: StorageConfig | None = None) -> tuple[Stage, torch.nn.Module]:
    """Rebuild the model a checkpoint was saved from, with its trained weights."""
    meta = ckpt.read_meta(uri, storage_cfg)
    try:
        stage = get_stage(meta.stage)
    except ValueError as e:
        raise ValueError(f"{uri}/model.yaml: {e}") from None
    model_cfg = merge(stage.model_config(), meta.model)
    if "bert_init" in model_cfg.get("qformer", {}):
        model_cfg.qformer.bert_init = None  # the checkpoint overwrites it anyway
    model = stage.new_model(model_cfg)
    ckpt.load_trainable(model, uri, storage_cfg)
    return stage, model
