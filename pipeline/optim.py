"""AdamW parameter groups and the per-step warmup + cosine schedule."""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Only trainable parameters; biases and 1-D/0-D tensors (LayerNorms, temp) get no decay.

    Deviation: LAVIS HEAD decays the 0-dim ``temp``; we follow the pre-July-2023 grouping (ndim < 2 -> no decay).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(step: int, warmup: int, total: int, peak: float, floor: float) -> float:
    """Multiplier of the peak LR: linear warmup per step, then cosine to ``floor`` at ``total`` (per step).

    Deviation: LAVIS decays per epoch; the paper's step-based schedule is applied per step here.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))) / peak
