"""Per-GPU memory of each fine-tuning recipe at the paper's batch, computed (no GPU needed).

    python bench/finetune_memory.py [--gpus 16]

Parameter counts are exact (the paper's models built on the meta device, pipeline/models/presets.py). Memory:
* weights: every parameter in bf16 (DeepSpeed bf16 casts the whole module, frozen LLM included): 2 B/param;
* trainable state: fp32 master weights + Adam m and v (12 B/param) and fp32 gradient partitions (4 B/param),
  divided by the GPU count where the ZeRO stage shards them (stage 1: optimizer states; stage 2: + gradients),
  plus DeepSpeed's reduce/all-gather buckets (2 x 5e8 elements in bf16: 2 GB) with ZeRO >= 1;
* activations, bf16, per transformer layer and sample: 34*s*h + 5*a*s^2 bytes (Korthikanti et al. 2022, no
  memory-efficient attention, so an upper estimate); with gradient checkpointing in the ViT only each block's input
  (2*s*h) is kept plus one block's full activations during its recomputation; the frozen LLM keeps its
  activations (the loss back-propagates through it into the soft prompts).
An estimate, not a measurement: allocator fragmentation and CUDA context (~1-2 GB) come on top.
"""

from __future__ import annotations

import argparse

import torch

from pipeline.models.presets import LLM, VISION, stage1_counts, stage2_counts

GB = 1024 ** 3
# recipe: (paper batch, image size, LLM or None, Q-Former text tokens, LLM tokens)
RECIPES = {"caption (ViT-g + OPT-2.7B)": (256, 364, "opt-2.7b", 0, 32 + 32),
           "caption (ViT-g + FlanT5-XL)": (256, 364, "flan-t5-xl", 0, 32 + 32),
           "vqa (ViT-g + OPT-2.7B)": (128, 490, "opt-2.7b", 32, 32 + 32),
           "vqa (ViT-g + FlanT5-XL)": (128, 490, "flan-t5-xl", 32, 32 + 32),
           "retrieval (ViT-g)": (224, 364, None, 32, 0)}


def _layer_act(s: int, h: int, a: int) -> float:
    return 34 * s * h + 5 * a * s * s


def _count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def estimate(batch: int, gpus: int, image: int, llm: str | None, q_text: int, llm_tokens: int, zero: int) -> dict:
    b = batch // gpus
    vit = _count(VISION["eva_vit_g"])
    if llm:
        counts = stage2_counts("eva_vit_g", llm)
        lm = _count(LLM[llm])
        trainable = counts["trainable"] + vit
        frozen = lm
    else:
        trainable, frozen = stage1_counts()["trainable"] + vit, 0
    state = 16 * trainable
    if zero >= 1:
        state = 4 * trainable + 12 * trainable / gpus + 2 * GB  # fp32 grads whole, optimizer sharded, buckets
    if zero >= 2:
        state = 16 * trainable / gpus + 2 * GB
    weights = 2 * (trainable + frozen)
    s_img = (image // 14) ** 2 + 1
    vit_act = b * (39 * 2 * s_img * 1408 + _layer_act(s_img, 1408, 16))  # gradient checkpointing per block
    vit_act_full = b * 39 * _layer_act(s_img, 1408, 16)
    n_q = 3 * b if not llm else b  # retrieval's ITM runs the Q-Former on 3B pairs (+ B text-only, B query-only)
    q_act = (n_q + 2 * b) * 12 * _layer_act(32 + q_text, 768, 12) + n_q * 6 * 2 * s_img * 768 * 2
    lm_act = 0
    if llm:
        cfg = LLM[llm]
        with torch.device("meta"):
            c = cfg().config
        h = getattr(c, "hidden_size", None) or c.d_model
        layers = getattr(c, "num_hidden_layers", None) or c.num_layers * 2
        lm_act = b * layers * _layer_act(llm_tokens, h, c.num_attention_heads if hasattr(c, "num_attention_heads")
                                         else c.num_heads) + b * llm_tokens * c.vocab_size * 6  # logits bf16 + fp32
    total = weights + state + vit_act + q_act + lm_act
    return {"per_gpu_batch": b, "trainable_M": trainable / 1e6, "weights_GB": weights / GB, "state_GB": state / GB,
            "activations_GB": (vit_act + q_act + lm_act) / GB, "vit_no_ckpt_GB": vit_act_full / GB,
            "total_GB": total / GB}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=16)
    a = ap.parse_args(argv)
    print(f"{'recipe':30s} {'B/GPU':>5s} {'train M':>8s} " + " ".join(f"{'ZeRO-' + str(z):>8s}" for z in (0, 1, 2))
          + "  (GB per GPU; activations, ViT without checkpointing)")
    for name, (batch, image, llm, q_text, tokens) in RECIPES.items():
        rows = [estimate(batch, a.gpus, image, llm, q_text, tokens, z) for z in (0, 1, 2)]
        print(f"{name:30s} {rows[0]['per_gpu_batch']:5d} {rows[0]['trainable_M']:8.0f} "
              + " ".join(f"{r['total_GB']:8.1f}" for r in rows)
              + f"  ({rows[0]['activations_GB']:.1f}; {rows[0]['vit_no_ckpt_GB']:.1f})")


if __name__ == "__main__":
    main()
