"""AdamW parameter groups with layer-wise learning-rate decay over the image encoder's blocks (fine-tuning).

Layer ids as LAVIS's EVA ViT ``get_num_layer`` numbers them: the patch/class/position embeddings are layer 0,
block ``i`` is layer ``i + 1``; a parameter at layer ``k`` of an ``L``-block tower gets ``lr * decay ** (L + 1 - k)``
(so the last block gets ``decay``, not 1). Everything outside the tower (Q-Former, ln_vision, projections) keeps
the full lr. Weight decay as :func:`pipeline.optim.param_groups`: none for biases and 1-D/0-D tensors.

Deviation: LAVIS builds these groups but every scheduler overwrites ``param_group["lr"]`` (``lr_scale`` has no
reader), so its ``lr_layer_decay`` is a no-op; here the scale is kept, as the paper's appendix lists it.
"""

from __future__ import annotations

import re

import torch

TOWER = "vision.tower."
_BLOCK = re.compile(r"^vision\.tower\.encoder\.layers?\.(\d+)\.")


def vit_layer_id(name: str, num_layers: int) -> int | None:
    """Layer id of a parameter of the tower (None outside it)."""
    if not name.startswith(TOWER):
        return None
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith(TOWER + "embeddings."):
        return 0
    return num_layers  # anything else in the tower sits after the blocks


def layer_scale(layer_id: int | None, num_layers: int, decay: float) -> float:
    return 1.0 if layer_id is None else decay ** (num_layers + 1 - layer_id)


def layer_decay_groups(model: torch.nn.Module, lr: float, weight_decay: float, decay: float,
                       num_layers: int) -> list[dict]:
    """One group per (layer, decay/no-decay); each group's ``lr`` is already ``lr * scale`` (LambdaLR and
    DeepSpeed scale each group's initial lr by the schedule, so the ratio holds at every step)."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim < 2 or name.endswith(".bias") else weight_decay
        layer = vit_layer_id(name, num_layers)
        scale = layer_scale(layer, num_layers, decay)
        g = groups.setdefault((layer, wd), {"params": [], "weight_decay": wd, "lr": lr * scale, "lr_scale": scale,
                                            "name": f"{'other' if layer is None else f'vit_layer_{layer}'}_"
                                                    f"{'decay' if wd else 'no_decay'}"})
        g["params"].append(p)
    return list(groups.values())
