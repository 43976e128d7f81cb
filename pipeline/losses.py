"""BLIP-2 stage-1 losses and the pieces they need, as small pure functions (reference: LAVIS blip2_qformer.py).

The model returns a dict of named outputs; :func:`stage1_losses` turns it into named loss terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline import distributed as D


def itc_similarities(image_feats: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor):
    """Image-to-text and text-to-image logits against the global batch.

    image_feats [B, Q, E] and text_feat [B, E] are L2-normalised local features. Other ranks' features
    are gathered without gradient (LAVIS ``concat_all_gather``), so each row's loss back-propagates
    only into its own local feature. Similarity = max over the Q query cosines, divided by ``temp``.
    Returns (sim_i2t [B, B*W], sim_t2i [B, B*W]).
    """
    image_feats_all = D.gather_no_grad(image_feats)  # [BW, Q, E]
    text_feat_all = D.gather_no_grad(text_feat)  # [BW, E]
    sim_i2t = torch.einsum("bqe,ne->bnq", image_feats, text_feat_all).amax(-1) / temp
    sim_t2i = torch.einsum("be,nqe->bnq", text_feat, image_feats_all).amax(-1) / temp
    return sim_i2t, sim_t2i


def itc_targets(batch: int, device) -> torch.Tensor:
    """Index of each local sample in the global batch (equal batch per rank, as the reference assumes)."""
    start = D.rank() * batch
    return torch.arange(start, start + batch, device=device)


def itc_loss(image_feats, text_feat, temp, label_smoothing: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE with label smoothing 0.1, as in LAVIS (the paper does not mention smoothing)."""
    sim_i2t, sim_t2i = itc_similarities(image_feats, text_feat, temp)
    targets = itc_targets(image_feats.shape[0], image_feats.device)
    # Losses in fp32 whatever the model's dtype (autocast would do the same).
    return (F.cross_entropy(sim_i2t.float(), targets, label_smoothing=label_smoothing)
            + F.cross_entropy(sim_t2i.float(), targets, label_smoothing=label_smoothing)) / 2


@torch.no_grad()
def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per sample, drawn from softmax(sim) over the global batch with positives masked.

    Returns (neg_image_idx [B], neg_text_idx [B]) as indices into the global batch: a negative image
    for each local text and a negative text for each local image. Follows LAVIS HEAD (positives set to
    -10000 before the softmax), on copies rather than in place.
    """
    b = sim_i2t.shape[0]
    pos = itc_targets(b, sim_i2t.device)
    rows = torch.arange(b, device=sim_i2t.device)
    t2i, i2t = sim_t2i.float().clone(), sim_i2t.float().clone()
    t2i[rows, pos] = -10000.0
    i2t[rows, pos] = -10000.0
    neg_img = torch.multinomial(torch.softmax(t2i, 1), 1, generator=generator).squeeze(1)
    neg_txt = torch.multinomial(torch.softmax(i2t, 1), 1, generator=generator).squeeze(1)
    return neg_img, neg_txt


def itg_attention_mask(text_mask: torch.Tensor, num_query: int) -> torch.Tensor:
    """Boolean [B, Q+L, Q+L] mask (True = may attend) for image-grounded text generation.

    Query rows see only the queries. Text row t sees every query and the non-padding text tokens
    s <= t (UniLM-style multimodal causal mask, LAVIS Qformer.py get_extended_attention_mask).
    """
    b, length = text_mask.shape
    n = num_query + length
    mask = torch.zeros(b, n, n, dtype=torch.bool, device=text_mask.device)
    mask[:, :, :num_query] = True
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=text_mask.device))
    mask[:, num_query:, num_query:] = causal[None] & text_mask[:, None, :].bool()
    return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, N, N] boolean -> [B, 1, N, N] additive mask for transformers' attention functions."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min)[:, None]


def itm_loss(itm_logits: torch.Tensor, itm_labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(itm_logits.float(), itm_labels)


def itg_loss(itg_logits: torch.Tensor, itg_labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Next-token CE: logits[:, :-1] predict labels[:, 1:]; -100 (padding) is ignored; [DEC] is never a target."""
    logits = itg_logits[:, :-1].reshape(-1, itg_logits.shape[-1])
    return F.cross_entropy(logits.float(), itg_labels[:, 1:].reshape(-1), ignore_index=-100,
                           label_smoothing=label_smoothing)


def stage1_losses(out: dict) -> dict[str, torch.Tensor]:
    """Named loss terms from :meth:`Blip2Stage1.forward` outputs; total = ITC + ITM + ITG (equal weights)."""
    losses = {
        "itc_loss": itc_loss(out["image_feats"], out["text_feat"], out["temp"]),
        "itm_loss": itm_loss(out["itm_logits"], out["itm_labels"]),
        "itg_loss": itg_loss(out["itg_logits"], out["itg_labels"]),
    }
    losses["loss"] = losses["itc_loss"] + losses["itm_loss"] + losses["itg_loss"]
    return losses


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Stage-2 LM loss: plain CE (no smoothing) over non -100 labels; ``shift`` for decoder-only models."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def stage2_losses(out: dict) -> dict[str, torch.Tensor]:
    loss = lm_loss(out["logits"], out["labels"], out["shift"])
    return {"lm_loss": loss, "loss": loss}
