"""Model checkpoints: the trainable weights (safetensors) + the model config, local or s3://.

A checkpoint folder holds ``model.yaml`` (``stage`` and the model config), ``model.safetensors`` (only the
parameters with ``requires_grad``: the frozen image encoder and LLM are re-loaded from their
``from_pretrained`` sources, never saved) and a ``COMPLETE`` marker written last, so a half-written
folder is never taken for a checkpoint.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pipeline import storage
from pipeline.config import merge
from pipeline.storage import StorageConfig

MARKER = "COMPLETE"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_model(model: torch.nn.Module, stage: int, uri: str, storage_cfg: StorageConfig | None = None) -> None:
    storage.write_text(storage.join(uri, "model.yaml"),
                       OmegaConf.to_yaml({"stage": stage, "model": OmegaConf.structured(model.cfg)}), storage_cfg)
    storage.write_bytes(storage.join(uri, "model.safetensors"), save_safetensors(trainable_state(model)), storage_cfg)
    storage.write_text(storage.join(uri, MARKER), "", storage_cfg)


def is_complete(uri: str, storage_cfg: StorageConfig | None = None) -> bool:
    return storage.exists(storage.join(uri, MARKER), storage_cfg)


def load_model(uri: str, storage_cfg: StorageConfig | None = None) -> tuple[int, torch.nn.Module]:
    """Rebuild the model a checkpoint was saved from; every trainable parameter must be in it."""
    if not is_complete(uri, storage_cfg):
        raise FileNotFoundError(f"{uri}: not a complete checkpoint (no {MARKER} marker)")
    meta = OmegaConf.create(storage.read_text(storage.join(uri, "model.yaml"), storage_cfg))
    stage = int(meta.stage)
    if stage == 1:
        from pipeline.models.stage1 import Blip2Stage1, Stage1ModelConfig

        cfg = merge(Stage1ModelConfig, meta.model)
        cfg.qformer.bert_init = None  # the checkpoint overwrites it anyway
        model = Blip2Stage1(cfg)
    elif stage == 2:
        from pipeline.models.stage2 import Blip2Stage2, Stage2ModelConfig

        model = Blip2Stage2(merge(Stage2ModelConfig, meta.model))
    else:
        raise ValueError(f"{uri}/model.yaml: stage must be 1 or 2, got {stage}")
    state = load_safetensors(storage.read_bytes(storage.join(uri, "model.safetensors"), storage_cfg))
    want = set(trainable_state(model))
    if want - set(state) or set(state) - want:
        raise KeyError(f"{uri}/model.safetensors does not match the model: missing {sorted(want - set(state))[:5]}, "
                       f"unexpected {sorted(set(state) - want)[:5]}")
    model.load_state_dict(state, strict=False)
    return stage, model


def load_state(uri: str, storage_cfg: StorageConfig | None = None) -> dict[str, torch.Tensor]:
    """Just the trainable weights of a checkpoint (stage 2 starts from a stage-1 checkpoint this way)."""
    if not is_complete(uri, storage_cfg):
        raise FileNotFoundError(f"{uri}: not a complete checkpoint (no {MARKER} marker)")
    return load_safetensors(storage.read_bytes(storage.join(uri, "model.safetensors"), storage_cfg))


__all__ = ["save_model", "load_model", "load_state", "is_complete", "trainable_state"]
