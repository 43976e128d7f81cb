"""The image encoder (+ the trainable ``ln_vision`` LayerNorm on top of it): frozen in pretraining, trained
(optionally at a larger image size, with gradient checkpointing) in fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, Blip2VisionConfig, Blip2VisionModel, CLIPVisionModel

from pipeline.models.loading import resolve
from pipeline.models.pos_embed import resize_vision_tower
from pipeline.models.tensor_files import files_with_prefix, read_tensors

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class VisionConfig:
    name_or_path: str = "Salesforce/blip2-opt-2.7b"  # Blip2VisionModel / CLIPVisionModel / ViT-like folder or hub id
    # Reference: use the second-to-last block (EVA-CLIP-g 40->39, CLIP-L 24->23). The released BLIP-2 vision towers
    # (Salesforce/blip2-*) already have 39 blocks, so this is True only for a full EVA/CLIP tower.
    drop_last_layer: bool = False
    dtype: str = "fp16"  # frozen-encoder compute dtype: fp32 | fp16 | bf16
    ln_vision: bool = True  # trainable LayerNorm on the patch features
    # Fine-tuning (paper: captioning, VQA and retrieval train the image encoder): gradients, train mode. Use fp32
    # or bf16 (a trained fp16 tower without loss scaling goes to NaN, LAVIS #409; LAVIS fine-tunes it in fp32).
    trainable: bool = False
    image_size: int = 0  # 0 = the tower's own; else its position embeddings are interpolated (bicubic) to this size
    grad_checkpointing: bool = False  # recompute each block in backward (only matters with trainable)


def _layers(model: nn.Module) -> tuple[nn.Module, str]:
    enc = model.encoder
    for name in ("layers", "layer"):
        if isinstance(getattr(enc, name, None), nn.ModuleList):
            return enc, name
    raise ValueError(f"{type(model).__name__}: cannot find the encoder's block list to drop the last block")


def load_blip2_vision(folder: str, cfg, dtype: torch.dtype) -> Blip2VisionModel:
    """The ``vision_model`` of a whole BLIP-2 checkpoint, reading only its ``vision_model.*`` tensors.

    The tower is built on the meta device and takes the tensors as they are read (cast one at a time), so host
    memory peaks at about the tower's size in ``dtype`` rather than the whole model's (LLM included) in fp32;
    of a sharded checkpoint only the shards holding vision tensors are opened (or downloaded, for a hub id).
    """
    prefix = "vision_model."
    with torch.device("meta"):
        tower = Blip2VisionModel._from_config(cfg.vision_config, dtype=dtype)
    expected = set(tower.state_dict())
    state = {}
    for path, keys in files_with_prefix(folder, prefix).items():
        for key, tensor in read_tensors(path, keys, dtype).items():
            if key[len(prefix):] not in expected:
                raise KeyError(f"{path}: unexpected vision tensor {key} for {type(tower).__name__}")
            state[key[len(prefix):]] = tensor
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(f"{folder}: the checkpoint lacks {len(missing)} vision tensors, e.g. {prefix}{missing[0]}")
    tower.load_state_dict(state, strict=True, assign=True)
    return tower.eval()


def load_vision_tower(name_or_path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a vision tower that returns patch features as ``last_hidden_state``, with weights in ``dtype``."""
    path = resolve(name_or_path)
    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type == "blip-2":  # a whole BLIP-2 checkpoint: read only its vision model
        return load_blip2_vision(path, cfg, dtype)
    if cfg.model_type == "clip":
        return CLIPVisionModel.from_pretrained(path, dtype=dtype)
    if cfg.model_type == "blip_2_vision_model":
        return Blip2VisionModel.from_pretrained(path, dtype=dtype)
    return AutoModel.from_pretrained(path, dtype=dtype)


class FrozenVisionEncoder(nn.Module):
    """ViT + trainable ln_vision. Frozen by default (``requires_grad=False``, always in eval mode, run under
    ``no_grad``); with ``cfg.trainable`` the tower is trained like the rest (fine-tuning)."""

    def __init__(self, tower: nn.Module, cfg: VisionConfig):
        super().__init__()
        if cfg.trainable and cfg.dtype == "fp16":
            raise ValueError("vision.dtype fp16 with vision.trainable: a trained fp16 tower has no loss scaling and "
                             "diverges (LAVIS #409); use fp32 (or bf16)")
        if cfg.image_size and cfg.image_size != tower.config.image_size:
            resize_vision_tower(tower, cfg.image_size)
        if cfg.drop_last_layer:
            enc, name = _layers(tower)
            setattr(enc, name, getattr(enc, name)[:-1])
            tower.config.num_hidden_layers -= 1
        # Features are the last block's output without a final norm (reference: no norm in forward_features).
        for attr in ("post_layernorm", "layernorm"):
            if isinstance(getattr(tower, attr, None), nn.LayerNorm):
                setattr(tower, attr, nn.Identity())
        self.dtype = DTYPES[cfg.dtype]
        self.trainable = cfg.trainable
        self.tower = tower.to(self.dtype).train(cfg.trainable)
        for p in self.tower.parameters():
            p.requires_grad_(cfg.trainable)
        if cfg.trainable and cfg.grad_checkpointing:
            tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        width = tower.config.hidden_size
        # Deviation: for a Blip2VisionModel tower ln_vision uses the tower's layer_norm_eps (1e-6), not 1e-5, so
        # that it maps exactly onto transformers' vision_model.post_layernorm on export.
        eps = tower.config.layer_norm_eps if isinstance(tower.config, Blip2VisionConfig) else 1e-5
        self.ln_vision = nn.LayerNorm(width, eps=eps) if cfg.ln_vision else nn.Identity()
        self.width = width
        self.image_size = tower.config.image_size

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.tower.eval()  # the frozen tower never enters train mode (dropout/drop-path stay off)
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The tower's own dtype, not the configured one: DeepSpeed bf16/fp16 recasts every weight.
        dtype = next(self.tower.parameters()).dtype
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            feats = self.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        # ln_vision computes in fp32 (reference LayerNorm subclass), also when DeepSpeed bf16/fp16 has cast its
        # weights down; the Q-Former casts the result to its own dtype.
        ln = self.ln_vision
        if isinstance(ln, nn.LayerNorm):
            return F.layer_norm(feats.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)
        return feats.float()


def build_vision(cfg: VisionConfig) -> FrozenVisionEncoder:
    return FrozenVisionEncoder(load_vision_tower(cfg.name_or_path, DTYPES[cfg.dtype]), cfg)
