"""Model presets: the paper's models, with trainable/total parameter counts.

    python -m pipeline.models.presets          # prints the paper presets' counts (built on the meta device)
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    Blip2VisionConfig,
    Blip2VisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    OPTConfig,
    T5Config,
)

from pipeline.models.qformer import QFormer, QFormerConfig

# Frozen towers as the paper uses them (already truncated: ViT-g 39 blocks, CLIP-L 23 blocks).
VISION = {
    "eva_vit_g": lambda: Blip2VisionModel(Blip2VisionConfig()),  # 1408 wide, 39 blocks
    "clip_vit_l": lambda: CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                           num_hidden_layers=23, num_attention_heads=16,
                                                           patch_size=14, image_size=224, projection_dim=768)),
}
LLM = {
    "opt-2.7b": lambda: AutoModelForCausalLM.from_config(OPTConfig(
        vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
        max_position_embeddings=2048, word_embed_proj_dim=2560)),
    "opt-6.7b": lambda: AutoModelForCausalLM.from_config(OPTConfig(
        vocab_size=50272, hidden_size=4096, num_hidden_layers=32, ffn_dim=16384, num_attention_heads=32,
        max_position_embeddings=2048, word_embed_proj_dim=4096)),
    "flan-t5-xl": lambda: AutoModelForSeq2SeqLM.from_config(T5Config(
        vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "flan-t5-xxl": lambda: AutoModelForSeq2SeqLM.from_config(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}
# Paper Table 2: trainable parameters (M) of each stage-2 model.
PAPER_STAGE2_TRAINABLE_M = {
    ("clip_vit_l", "opt-2.7b"): 104, ("eva_vit_g", "opt-2.7b"): 107, ("eva_vit_g", "opt-6.7b"): 108,
    ("clip_vit_l", "flan-t5-xl"): 103, ("eva_vit_g", "flan-t5-xl"): 107, ("eva_vit_g", "flan-t5-xxl"): 108,
}
PAPER_STAGE1_M = 188
QFORMER_VOCAB = 30523  # bert-base-uncased + [DEC]


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stage1_counts(vision: str = "eva_vit_g", cfg: QFormerConfig | None = None) -> dict[str, int]:
    """Trainable (Q-Former + ln_vision + heads + temp) and total parameters of the stage-1 model."""
    cfg = cfg or QFormerConfig()
    with torch.device("meta"):
        tower = VISION[vision]()
        width = tower.config.hidden_size
        q = QFormer(cfg, width, QFORMER_VOCAB, text=True)
    heads = 2 * (cfg.hidden_size * cfg.embed_dim + cfg.embed_dim) + (2 * cfg.hidden_size + 2) + 1  # projs, itm, temp
    trainable = _n(q) + heads + 2 * width  # + ln_vision
    return {"trainable": trainable, "total": trainable + _n(tower)}


def stage2_counts(vision: str, llm: str, cfg: QFormerConfig | None = None) -> dict[str, int]:
    """Trainable (query path of the Q-Former + ln_vision + projection) and total parameters of stage 2."""
    cfg = cfg or QFormerConfig(bert_init=None)
    with torch.device("meta"):
        tower = VISION[vision]()
        lm = LLM[llm]()
        width = tower.config.hidden_size
        q = QFormer(cfg, width, QFORMER_VOCAB, text=False)
    d = lm.config.hidden_size if hasattr(lm.config, "hidden_size") else lm.config.d_model
    trainable = _n(q) + 2 * width + cfg.hidden_size * d + d
    return {"trainable": trainable, "total": trainable + _n(tower) + _n(lm)}


def main() -> None:
    s1 = stage1_counts()
    print(f"stage 1 (ViT-g): trainable {s1['trainable'] / 1e6:.1f}M (paper {PAPER_STAGE1_M}M), "
          f"total {s1['total'] / 1e6:.0f}M")
    for (vision, llm), paper in PAPER_STAGE2_TRAINABLE_M.items():
        c = stage2_counts(vision, llm)
        print(f"stage 2 {vision} + {llm}: trainable {c['trainable'] / 1e6:.1f}M (paper {paper}M), "
              f"total {c['total'] / 1e9:.2f}B")


if __name__ == "__main__":
    main()


