"""CapFilt as two Ray Data actor-pool stages (BLIP §3.3; BLIP-2 §3.4).

``Captioner``: K synthetic captions per image by nucleus sampling from any transformers image-to-text model
(``BlipForConditionalGeneration``, ``Blip2ForConditionalGeneration``, this project's exported stage 2).
``CaptionFilter``: scores the web caption and every synthetic caption, then either keeps the top-k by
image-text similarity (``CLIPModel`` or a ``Blip2ForImageTextRetrieval`` ITC, BLIP-2's recipe) or drops
what the ITM head calls unmatched (``Blip2ForImageTextRetrieval`` / ``BlipForImageTextRetrieval``, BLIP's).
Both take and return pandas batches; rows whose ``status`` is not "ok" pass through untouched.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from dataprep.config import CaptionerConfig, FilterConfig
from dataprep.validate import clean_caption
from pipeline.models.loading import resolve


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def _images(df: pd.DataFrame) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in df["jpg"]]


class Captioner:
    def __init__(self, cfg: dict):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = CaptionerConfig(**cfg)
        path = resolve(self.cfg.model)
        self.device = _device(self.cfg.num_gpus)
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path).eval().to(self.device)
        self.decoder_only = not self.model.config.get_text_config().is_encoder_decoder

    @torch.no_grad()
    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        c = self.cfg
        out = [[] for _ in range(len(df))]
        ok = np.flatnonzero((df["status"] == "ok").to_numpy())
        if len(ok):
            sub = df.iloc[ok]
            # Seeded by the batch's keys: the same input gives the same captions, whatever the actor.
            torch.manual_seed(c.seed + zlib.crc32("".join(sub["key"]).encode()))
            inputs = self.processor(images=_images(sub), text=[c.prompt] * len(sub), return_tensors="pt").to(
                self.device)
            gen = self.model.generate(**inputs, do_sample=True, top_p=c.top_p, top_k=0, max_new_tokens=c.max_length,
                                      num_return_sequences=c.num_captions)
            if self.decoder_only and "input_ids" in inputs:
                gen = gen[:, inputs["input_ids"].shape[1]:]
            texts = self.processor.batch_decode(gen, skip_special_tokens=True)
            for j, i in enumerate(ok):
                caps = [clean_caption(t, 50) for t in texts[j * c.num_captions:(j + 1) * c.num_captions]]
                out[i] = [t for t in caps if t]
        df = df.copy()
        df["synthetic_captions"] = out
        return df


class CaptionFilter:
    def __init__(self, cfg: dict):
        from transformers import AutoConfig, AutoProcessor

        self.cfg = FilterConfig(**cfg)
        if self.cfg.mode not in ("topk", "itm"):
            raise ValueError(f"capfilt.filter.mode={self.cfg.mode!r}: expected 'topk' or 'itm'")
        path = resolve(self.cfg.model)
        self.device = _device(self.cfg.num_gpus)
        self.kind = AutoConfig.from_pretrained(path).model_type
        self.processor = AutoProcessor.from_pretrained(path)
        if self.kind == "clip":
            from transformers import CLIPModel as cls
        elif self.kind == "blip-2":
            from transformers import Blip2ForImageTextRetrieval as cls
        elif self.kind == "blip":
            from transformers import BlipForImageTextRetrieval as cls
        else:
            raise ValueError(f"capfilt.filter.model {self.cfg.model!r}: model type {self.kind!r} is not a supported "
                             "filter (clip, blip-2 retrieval, blip retrieval)")
        if self.cfg.mode == "itm" and self.kind == "clip":
            raise ValueError("capfilt.filter.mode=itm needs an ITM head (BLIP/BLIP-2 retrieval), not CLIP")
        self.model = cls.from_pretrained(path).eval().to(self.device)

    def _text(self, texts: list[str]):
        tok = getattr(self.processor, "tokenizer", self.processor)
        return tok(texts, padding=True, truncation=True, max_length=35, return_tensors="pt").to(self.device)

    @torch.no_grad()
    def scores(self, images: list[Image.Image], pair_image: list[int], texts: list[str]) -> np.ndarray:
        """Similarity (topk mode) or p(match) (itm mode) of each (image[pair_image[k]], texts[k]) pair."""
        image_processor = getattr(self.processor, "image_processor", self.processor)
        pix = image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        t = self._text(texts)
        idx = torch.tensor(pair_image, device=self.device)
        m = self.model
        if self.cfg.mode == "itm":
            if self.kind == "blip-2":
                logits = m(pixel_values=pix[idx], input_ids=t.input_ids, attention_mask=t.attention_mask,
                           use_image_text_matching_head=True).logits_per_image
            else:
                logits = m(pixel_values=pix[idx], input_ids=t.input_ids, attention_mask=t.attention_mask,
                           use_itm_head=True).itm_score
            return torch.softmax(logits.float(), -1)[:, 1].cpu().numpy()
        if self.kind == "clip":
            img = F.normalize(m.get_image_features(pixel_values=pix), dim=-1)
            txt = F.normalize(m.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask), dim=-1)
            return (img[idx] * txt).sum(-1).cpu().numpy()
        if self.kind == "blip-2":  # ITC: max over the query cosines, as Blip2ForImageTextRetrieval computes it
            emb = m.vision_model(pixel_values=pix).last_hidden_state
            q = m.qformer(query_embeds=m.query_tokens.expand(emb.shape[0], -1, -1), encoder_hidden_states=emb,
                          encoder_attention_mask=torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
                          ).last_hidden_state
            img = F.normalize(m.vision_projection(q), dim=-1)  # [I, Q, E]
            tx = m.qformer(query_embeds=m.embeddings(input_ids=t.input_ids), query_length=0,
                           attention_mask=t.attention_mask).last_hidden_state
            txt = F.normalize(m.text_projection(tx[:, 0]), dim=-1)  # [T, E]
            return torch.einsum("tqe,te->tq", img[idx], txt).amax(-1).cpu().numpy()
        sims = m(pixel_values=pix[idx], input_ids=t.input_ids, attention_mask=t.attention_mask,
                 use_itm_head=False).itm_score  # BLIP: cosine matrix of the pairs
        return torch.diagonal(sims).cpu().numpy()

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        c = self.cfg
        df = df.copy()
        if "synthetic_captions" not in df:
            df["synthetic_captions"] = [[] for _ in range(len(df))]
        ok = np.flatnonzero((df["status"] == "ok").to_numpy())
        cands = [[w, *list(s)] for w, s in zip(df["web_caption"], df["synthetic_captions"])]
        scores = [[] for _ in range(len(df))]
        if len(ok):
            pair_image = [j for j, i in enumerate(ok) for _ in cands[i]]
            texts = [t for i in ok for t in cands[i]]
            flat = self.scores(_images(df.iloc[ok]), pair_image, texts)
            pos = 0
            for i in ok:
                scores[i] = [float(x) for x in flat[pos:pos + len(cands[i])]]
                pos += len(cands[i])
        kept, web_kept = [], []
        for i in range(len(df)):
            s = np.asarray(scores[i])
            if c.mode == "itm":
                keep = [k for k in range(len(s)) if s[k] >= c.itm_threshold]
            else:
                keep = [int(k) for k in np.argsort(-s, kind="stable")[:c.top_k]]
                if c.min_similarity is not None:
                    keep = [k for k in keep if s[k] >= c.min_similarity]
            kept.append([cands[i][k] for k in keep])
            web_kept.append(0 in keep)
        df["candidate_scores"] = scores
        df["kept_captions"] = kept
        df["web_caption_kept"] = web_kept
        no_caption = (df["status"] == "ok") & (df["kept_captions"].map(len) == 0)
        df.loc[no_caption, "status"] = "filtered"
        df.loc[no_caption, "reason"] = "capfilt_no_caption"
        return df


def two_means_threshold(scores) -> float:
    """Unsupervised split of a 1-D score distribution into two modes (no labels used): a ``filter.min_similarity``
    for CapFilt when the noise rate is unknown."""
    x = np.asarray(scores, dtype=float)
    th = float(np.median(x))
    for _ in range(100):
        lo, hi = x[x < th], x[x >= th]
        if not len(lo) or not len(hi):
            break
        th = float((lo.mean() + hi.mean()) / 2)
    return th
