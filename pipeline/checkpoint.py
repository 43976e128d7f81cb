"""Model checkpoints: the trainable weights (safetensors) + the model config, local or s3://.

A checkpoint folder holds ``model.yaml`` (the stage's name and the model config), ``model.safetensors`` (only the
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
from pipeline.storage import StorageConfig

MARKER = "COMPLETE"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_model(model: torch.nn.Module, stage: str, uri: str, storage_cfg: StorageConfig | None = None) -> None:
    """``stage``: the name of the :class:`pipeline.stages.Stage` that trained it (recorded in model.yaml)."""
    storage.write_text(storage.join(uri, "model.yaml"),
                       OmegaConf.to_yaml({"stage": stage, "model": OmegaConf.structured(model.cfg)}), storage_cfg)
    storage.write_bytes(storage.join(uri, "model.safetensors"), save_safetensors(trainable_state(model)), storage_cfg)
    storage.write_text(storage.join(uri, MARKER), "", storage_cfg)


def is_complete(uri: str, storage_cfg: StorageConfig | None = None) -> bool:
    return storage.exists(storage.join(uri, MARKER), storage_cfg)


def read_meta(uri: str, storage_cfg: StorageConfig | None = None):
    """A complete checkpoint's ``model.yaml``: its stage name and model config."""
    if not is_complete(uri, storage_cfg):
        raise FileNotFoundError(f"{uri}: not a complete checkpoint (no {MARKER} marker)")
    return OmegaConf.create(storage.read_text(storage.join(uri, "model.yaml"), storage_cfg))


def load_trainable(model: torch.nn.Module, uri: str, storage_cfg: StorageConfig | None = None) -> None:
    """Load a checkpoint's weights into ``model``; every trainable parameter must be in it, and nothing else."""
    state = load_state(uri, storage_cfg)
    want = set(trainable_state(model))
    if want - set(state) or set(state) - want:
        raise KeyError(f"{uri}/model.safetensors does not match the model: missing {sorted(want - set(state))[:5]}, "
                       f"unexpected {sorted(set(state) - want)[:5]}")
    model.load_state_dict(state, strict=False)


def load_state(uri: str, storage_cfg: StorageConfig | None = None) -> dict[str, torch.Tensor]:
    """Just the trainable weights of a checkpoint (stage 2 starts from a stage-1 checkpoint this way)."""
    if not is_complete(uri, storage_cfg):
        raise FileNotFoundError(f"{uri}: not a complete checkpoint (no {MARKER} marker)")
    return load_safetensors(storage.read_bytes(storage.join(uri, "model.safetensors"), storage_cfg))


__all__ = ["save_model", "read_meta", "load_trainable", "load_state", "is_complete", "trainable_state"]
