"""What the fine-tuning stages (captioning, VQA, retrieval; registered in pipeline/stages.py) add to the pretraining
stages: the same Ray Train + DeepSpeed loop, checkpoints, resume and metrics; what differs is the model config
(image encoder trained, prompts, the VQA question in the Q-Former), the initialisation from any earlier
checkpoint, the optimizer's layer-wise lr decay, the VQA inputs and the exports."""

from __future__ import annotations

from pipeline import checkpoint as ckpt
from pipeline.config import ConfigError
from pipeline.layer_decay import layer_decay_groups


def init_source(cfg) -> str | None:
    """"checkpoint" (``init_from``), "hf" (``init_from_hf``) or None; naming both is an error."""
    if cfg.init_from and cfg.init_from_hf:
        raise ConfigError(f"config keys 'init_from' ({cfg.init_from}) and 'init_from_hf' ({cfg.init_from_hf}): "
                          "name one starting point, not both")
    return "hf" if cfg.init_from_hf else "checkpoint" if cfg.init_from else None


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


class FinetuneMixin:
    """What a fine-tuning stage adds to the pretraining stage whose model it trains (stages.py combines the two:
    ``class CaptionStage(FinetuneMixin, Stage2)``): its name, job schema, initialisation and optimizer groups."""

    recipe: str

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
        if init_source(cfg) == "hf":
            from pipeline.models.from_transformers import from_folder

            return from_folder(self.new_model, cfg.init_from_hf, cfg.model, self.init_class)
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


def vqa_inputs(model, batch: dict, device) -> dict:
    """A VQA batch: the question into the Q-Former and the LLM prompt, the answer (drawn like a caption) as target."""
    if not any(batch["question"]):
        raise ValueError("VQA fine-tuning data has no questions: convert VQAv2 with jobs/finetune_data.py vqav2")
    return {"pixel_values": batch["pixel_values"].to(device),
            **model.tokenize_vqa(batch["question"], batch["caption"], device=device)}
