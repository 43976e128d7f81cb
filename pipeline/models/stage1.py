"""Stage 1: the Q-Former learns against the frozen image encoder with ITC + ITM + ITG.

``forward`` returns a dict of named outputs that goes straight into :func:`pipeline.losses.stage1_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import distributed as D
from pipeline.losses import itc_similarities, sample_hard_negatives
from pipeline.models.qformer import QFormer, QFormerConfig, load_tokenizer
from pipeline.models.vision import VisionConfig, build_vision


@dataclass
class Stage1ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)


def fetch_negatives(image_embeds, input_ids, attention_mask, neg_img, neg_txt, dtype: torch.dtype):
    """The sampled negatives' image embeddings, text ids and masks, fetched from the ranks that own them.

    Only those B rows travel (LAVIS's all_gather_with_grad moves the world's rows, see :func:`gather_negatives`).
    Images travel in ``dtype``, the Q-Former's, which would cast them anyway, so the result is the same; they keep
    their gradient, which goes back to the owning rank's ``ln_vision``.
    """
    b = image_embeds.shape[0]
    images = D.fetch_rows(image_embeds, D.plan_rows(neg_img, b), dtype=dtype)
    text = D.fetch_rows(torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1), D.plan_rows(neg_txt, b))
    ids, mask = text.split(input_ids.shape[1], 1)
    return images, ids, mask.to(attention_mask.dtype)


def gather_negatives(image_embeds, input_ids, attention_mask, neg_img, neg_txt):
    """The reference (LAVIS): gather every rank's rows (images with gradient, in their own dtype), then index.

    Not used in training; the tests and bench/itm_bytes.py compare :func:`fetch_negatives` against it.
    """
    world = D.gather_with_grad(image_embeds)
    return world[neg_img], D.gather_no_grad(input_ids)[neg_txt], D.gather_no_grad(attention_mask)[neg_txt]


class Blip2Stage1(nn.Module):
    def __init__(self, cfg: Stage1ModelConfig, vision: nn.Module | None = None, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.qformer.tokenizer)
        self.vision = vision if vision is not None else build_vision(cfg.vision)
        self.qformer = QFormer(cfg.qformer, self.vision.width, len(self.tokenizer), text=True)
        if cfg.qformer.bert_init:
            self.qformer.load_bert(cfg.qformer.bert_init)
        h, e = cfg.qformer.hidden_size, cfg.qformer.embed_dim
        self.vision_proj = nn.Linear(h, e)
        self.text_proj = nn.Linear(h, e)
        self.itm_head = nn.Linear(h, 2)
        # A divisor, learned and never clamped (reference); shape [1] because DeepSpeed cannot broadcast 0-dim params.
        self.temp = nn.Parameter(torch.full((1,), 0.07))
        self.bos_id = self.tokenizer.bos_token_id
        self.pad_id = self.tokenizer.pad_token_id

    def tokenize(self, texts: list[str], device=None) -> dict[str, torch.Tensor]:
        t = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.cfg.qformer.max_txt_len,
                           return_tensors="pt")
        return {"input_ids": t.input_ids.to(device), "attention_mask": t.attention_mask.to(device)}

    def image_features(self, pixel_values):
        image_embeds = self.vision(pixel_values)
        query = self.qformer.encode_queries(image_embeds)
        return image_embeds, F.normalize(self.vision_proj(query), dim=-1)

    def text_features(self, input_ids, attention_mask):
        text = self.qformer.encode_text(input_ids, attention_mask)
        return F.normalize(self.text_proj(text[:, 0]), dim=-1)

    def itm_logits(self, input_ids, attention_mask, image_embeds):
        """ITM head on each query output, averaged over queries: [N, 2]."""
        hidden = self.qformer.encode_multimodal(input_ids, attention_mask, image_embeds)
        return self.itm_head(hidden[:, : self.qformer.num_query]).mean(1)

    def hard_negatives(self, image_embeds, input_ids, attention_mask, neg_img, neg_txt):
        return fetch_negatives(image_embeds, input_ids, attention_mask, neg_img, neg_txt,
                               self.qformer.query_tokens.dtype)

    def forward(self, pixel_values, input_ids, attention_mask, generator: torch.Generator | None = None) -> dict:
        b = pixel_values.shape[0]
        image_embeds, image_feats = self.image_features(pixel_values)
        text_feat = self.text_features(input_ids, attention_mask)

        # ITM: one hard negative per sample, drawn from the global batch (reference sampling, unchanged).
        sim_i2t, sim_t2i = itc_similarities(image_feats, text_feat, self.temp)
        neg_img, neg_txt = sample_hard_negatives(sim_i2t.detach(), sim_t2i.detach(), generator)
        neg_images, neg_ids, neg_mask = self.hard_negatives(image_embeds, input_ids, attention_mask, neg_img, neg_txt)
        dtype = neg_images.dtype
        ids_all = torch.cat([input_ids, input_ids, neg_ids])
        mask_all = torch.cat([attention_mask, attention_mask, neg_mask])
        images_all = torch.cat([image_embeds.to(dtype), neg_images, image_embeds.to(dtype)])
        itm_logits = self.itm_logits(ids_all, mask_all, images_all)
        itm_labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)]).to(
            itm_logits.device)

        # ITG: [DEC] replaces [CLS]; padding is never a target.
        dec_ids = input_ids.clone()
        dec_ids[:, 0] = self.bos_id
        itg_labels = dec_ids.masked_fill(attention_mask == 0, -100)
        itg_logits = self.qformer.decode_logits(dec_ids, attention_mask, image_embeds)

        return {"image_feats": image_feats, "text_feat": text_feat, "temp": self.temp,
                "itm_logits": itm_logits, "itm_labels": itm_labels, "neg_image_idx": neg_img,
                "neg_text_idx": neg_txt, "itg_logits": itg_logits, "itg_labels": itg_labels}

    @torch.no_grad()
    def generate(self, pixel_values, max_length: int = 30, min_length: int = 1, do_sample: bool = False, top_p: float = 0.9) -> list[str]:
        """Stage-1 image-grounded captioning (greedy, or nucleus sampling with ``do_sample``), used by CapFilt with a stage-1 model."""
        image_embeds = self.vision(pixel_values)
        b = image_embeds.shape[0]
        ids = torch.full((b, 1), self.bos_id, dtype=torch.long, device=image_embeds.device)
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        sep = self.tokenizer.sep_token_id
        for step in range(max_length - 1):
            logits = self.qformer.decode_logits(ids, torch.ones_like(ids), image_embeds)[:, -1]
            if step + 1 < min_length:
                logits[:, sep] = float("-inf")
            if do_sample:
                probs = torch.softmax(logits, -1)
                sorted_p, order = probs.sort(-1, descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < top_p
                sorted_p = sorted_p * keep
                nxt = order.gather(1, torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1))
            else:
                nxt = logits.argmax(-1, keepdim=True)
            nxt = nxt.masked_fill(done[:, None], self.pad_id)
            ids = torch.cat([ids, nxt], 1)
            done |= nxt.squeeze(1) == sep
            if done.all():
                break
        return [t.strip() for t in self.tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True)]
