"""Position embeddings of a ViT resized to a new image size (fine-tuning at 364 px from a 224-px tower).

Bicubic on the patch grid, the class position kept as it is (reference: LAVIS eva_vit.py ``interpolate_pos_embed``,
which transformers' ``Blip2VisionEmbeddings.interpolate_pos_encoding`` computes the same way at run time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def interpolate_grid(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + g*g, D] -> [1, 1 + grid*grid, D]; an unchanged grid returns ``pos`` itself."""
    g = int(round((pos.shape[1] - 1) ** 0.5))
    if g * g != pos.shape[1] - 1:
        raise ValueError(f"position embeddings of length {pos.shape[1]} are not 1 + a square patch grid")
    if g == grid:
        return pos
    patches = pos[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1].float(), patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1).to(pos.dtype)


@torch.no_grad()
def resize_vision_tower(tower: nn.Module, image_size: int) -> None:
    """Resize a ``Blip2VisionModel``'s position embeddings (and its config) to ``image_size`` in place."""
    emb = getattr(tower, "embeddings", None)
    if not isinstance(getattr(emb, "position_embedding", None), nn.Parameter):
        raise ValueError(f"vision.image_size: resizing needs a Blip2VisionModel-style tower (position_embedding "
                         f"parameter), got {type(tower).__name__}")
    patch = tower.config.patch_size
    if image_size % patch:
        raise ValueError(f"vision.image_size {image_size} is not a multiple of the patch size {patch}")
    grid = image_size // patch
    emb.position_embedding = nn.Parameter(interpolate_grid(emb.position_embedding.data, grid),
                                          requires_grad=emb.position_embedding.requires_grad)
    emb.image_size = image_size
    emb.num_patches = grid * grid
    emb.num_positions = grid * grid + 1
    tower.config.image_size = image_size
