"""Image bytes -> normalised pixel tensors (CLIP mean/std, as the reference's processors)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 CHW, CLIP-normalised."""
    return ((rgb.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def to_pixel_values(images: list[bytes], size: int) -> torch.Tensor:
    """Eval transform: resize to size x size (bicubic), normalise. Returns [N, 3, size, size]."""
    out = []
    for b in images:
        img = Image.open(io.BytesIO(b)).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(normalize(np.asarray(img)))
    return torch.from_numpy(np.stack(out))
