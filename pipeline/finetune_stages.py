"""The fine-tuning recipes as stages (:class:`pipeline.stages.Stage`'s interface): the same Ray Train + DeepSpeed loop, checkpoints,
resume and metrics as pretraining; what differs is the model config (image encoder trained, prompts, the VQA
question in the Q-Former), the optimizer's layer-wise lr decay, the inputs a batch becomes and the export."""

from __future__ import annotations

from pipeline import checkpoint as ckpt
from pipeline.config import ConfigError
from pipeline.layer_decay import layer_decay_groups
from pipeline.losses import stage1_losses, stage2_losses


def init_from_checkpoint(model, uri: str) -> list[str]:
    """Load every weight of a stage-1 / stage-2 / fine-tuning checkpoint that the model has (same shape); the
    Q-Former must be among them. Returns the model's trainable weights left at their initial values."""
    state = ckpt.load_state(uri)
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("qformer.") for k in keep):
        raise ValueError(f"init_from {uri!r}: no Q-Former weight of this model's shape in the checkpoint")
    model.load_state_dict(keep, strict=False)
    return sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in keep
                  and not n.startswith("vision.tower."))


class FinetuneStage:
    """Implements the :class:`pipeline.stages.Stage` interface; not a subclass because stages.py registers these
    stages (importing it here would make an import cycle)."""

    recipe: str
    hf_class: str

    @property
    def name(self) -> str:
        return f"finetune_{self.recipe}"

    def job_config(self):
        from pipeline.finetune_config import JOB_CONFIGS

        return JOB_CONFIGS[self.recipe]

    def build(self, cfg):
        size = cfg.model.vision.image_size
        if size and cfg.data.image_size != size:
            raise ConfigError(f"config key 'data.image_size' ({cfg.data.image_size}) must equal "
                              f"'model.vision.image_size' ({size}): the position embeddings are sized for it")
        if cfg.init_from_hf:
            raise ConfigError("config key 'init_from_hf': starting fine-tuning from a transformers folder is not "
                              "built yet; use init_from=<stage-1/stage-2 checkpoint URI>")
        model = self.new_model(cfg.model)
        if cfg.init_from:
            fresh = init_from_checkpoint(model, cfg.init_from)
            if fresh:
                print(f"[finetune] init_from {cfg.init_from}: {len(fresh)} trainable weights start fresh, e.g. "
                      f"{fresh[:3]}", flush=True)
        return model

    def param_groups(self, model, cfg) -> list[dict]:
        o = cfg.optim
        return layer_decay_groups(model, o.lr, o.weight_decay, o.layer_decay,
                                  model.vision.tower.config.num_hidden_layers)


class CaptionStage(FinetuneStage):
    """Stage-2 model, LM loss after the prompt "a photo of", image encoder trained."""

    recipe, hf_class = "caption", "Blip2ForConditionalGeneration"

    def model_config(self):
        from pipeline.models.stage2 import Stage2ModelConfig

        return Stage2ModelConfig

    def new_model(self, model_cfg):
        from pipeline.models.stage2 import Blip2Stage2

        return Blip2Stage2(model_cfg)

    def inputs(self, model, batch, device, rng):
        return {"pixel_values": batch["pixel_values"].to(device),
                **model.tokenize(batch["caption"], rng=rng, device=device)}

    def losses(self, out):
        return stage2_losses(out)

    def export(self, model, out_dir):
        from pipeline.models.export_finetune import export_caption

        export_caption(model, out_dir)


class VqaStage(CaptionStage):
    """Stage-2 model whose Q-Former reads the question; loss on the answer tokens only."""

    recipe, hf_class = "vqa", "InstructBlipForConditionalGeneration"

    def inputs(self, model, batch, device, rng):
        if not any(batch["question"]):
            raise ValueError("VQA fine-tuning data has no questions: convert VQAv2 with jobs/finetune_data.py vqav2")
        return {"pixel_values": batch["pixel_values"].to(device),
                **model.tokenize_vqa(batch["question"], batch["caption"], device=device)}

    def export(self, model, out_dir):
        from pipeline.models.export_finetune import export_vqa

        export_vqa(model, out_dir)


class RetrievalStage(FinetuneStage):
    """Stage-1 model (ITC + ITM + ITG), image encoder trained."""

    recipe, hf_class = "retrieval", "Blip2ForImageTextRetrieval"

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


FINETUNE_STAGES = (CaptionStage(), VqaStage(), RetrievalStage())
