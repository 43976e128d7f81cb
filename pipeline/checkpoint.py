"""Model checkpoints: the trainable weights (safetensors) + the model config, local or s3://.

A checkpoint folder holds ``model.yaml`` (the stage's name and the model config), ``model.safetensors`` (only the
parameters with ``requires_grad``: the frozen image encoder and LLM are re-loaded from their
``from_pretrained`` sources, never saved) and a ``COMPLETE`` marker written last, so a half-written
folder is never taken for a checkpoint.

Under ZeRO-3 a parameter above DeepSpeed's persistence threshold lives as 1/world shards and reads as an empty
tensor; :func:`trainable_state` gathers those (a collective: every rank calls it) a few hundred MB at a time, and
only rank 0 keeps the copy.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pipeline import storage
from pipeline.storage import StorageConfig

MARKER = "COMPLETE"


GATHER_BYTES = 256 << 20  # ZeRO-3: full parameters materialised at once while gathering (besides rank 0's copy)


def trainable_state(model: torch.nn.Module, gather_bytes: int = GATHER_BYTES) -> dict[str, torch.Tensor]:
    """The parameters with ``requires_grad``, whole, on CPU. Under ZeRO-3 every rank must call this; rank 0
    gets them all, the other ranks an empty dict."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not any(hasattr(p, "ds_id") for _, p in params):  # not partitioned (ZeRO 0-2, or no DeepSpeed at all)
        return {n: p.detach().cpu().contiguous() for n, p in params}
    import deepspeed
    import torch.distributed as dist

    keep = dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for group in _by_size(params, gather_bytes):
        with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
            if keep:
                out.update({n: p.detach().cpu().clone() for n, p in group})
    return out


def _by_size(params: list, limit: int) -> list[list]:
    """Consecutive groups of (name, param) of about ``limit`` bytes (full, not partitioned, sizes)."""
    groups, group, size = [], [], 0
    for n, p in params:
        group.append((n, p))
        size += getattr(p, "ds_numel", p.numel()) * p.element_size()
        if size >= limit:
            groups.append(group)
            group, size = [], 0
    return groups + ([group] if group else [])


def write_model_files(model: torch.nn.Module, stage: str, state: dict[str, torch.Tensor], uri: str,
                      storage_cfg: StorageConfig | None = None) -> None:
    """``model.yaml`` + ``model.safetensors`` (``state``: from :func:`trainable_state`), without the marker."""
    storage.write_text(storage.join(uri, "model.yaml"),
                       OmegaConf.to_yaml({"stage": stage, "model": OmegaConf.structured(model.cfg)}), storage_cfg)
    storage.write_bytes(storage.join(uri, "model.safetensors"), save_safetensors(state), storage_cfg)


def mark_complete(uri: str, storage_cfg: StorageConfig | None = None) -> None:
    storage.write_text(storage.join(uri, MARKER), "", storage_cfg)


def save_model(model: torch.nn.Module, stage: str, uri: str, storage_cfg: StorageConfig | None = None) -> None:
    """A whole checkpoint folder for ``model``; ``stage``: the name of the :class:`pipeline.stages.Stage` that trained
    it (recorded in model.yaml). The training loop instead stages these files locally and uploads them in the
    background (pipeline/checkpoint_upload.py)."""
    write_model_files(model, stage, trainable_state(model), uri, storage_cfg)
    mark_complete(uri, storage_cfg)


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


__all__ = ["save_model", "write_model_files", "mark_complete", "read_meta", "load_trainable", "load_state", "is_complete", "trainable_state"]
