"""CapFilt as two Ray Data actor-pool stages (BLIP §3.3; BLIP-2 §3.4).

``Captioner``: K synthetic captions per image by nucleus sampling from any transformers image-to-text model
(``BlipForConditionalGeneration``, ``Blip2ForConditionalGeneration``, this project's exported stage 2).
``CaptionFilter``: scores the web caption and every synthetic caption, then either keeps the top-k by
image-text similarity (``CLIPModel`` or a ``Blip2ForImageTextRetrieval`` ITC, BLIP-2's recipe) or drops
what the ITM head calls unmatched (``Blip2ForImageTextRetrieval`` / ``BlipForImageTextRetrieval``, BLIP's).
Both take and return pandas batches; rows whose ``status`` is not "ok" pass through untouched.
"""

from __future__ import annotations

import hashlib
import io
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image

from dataprep.config import CaptionerConfig, FilterConfig, PoolConfig
from dataprep.shard_rows import per_shard
from dataprep.validate import clean_caption
from pipeline.models.loading import resolve

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _device_dtype(cfg: PoolConfig, key: str) -> tuple[str, torch.dtype]:
    if cfg.dtype not in _DTYPES:
        raise ValueError(f"capfilt.{key}.dtype={cfg.dtype!r}: expected one of {sorted(_DTYPES)}")
    if cfg.num_gpus > 0 and torch.cuda.is_available():
        return "cuda", _DTYPES[cfg.dtype]
    return "cpu", torch.float32


def _images(df: pd.DataFrame) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in df["jpg"]]


def _projected(features) -> torch.Tensor:
    """CLIP's projected embeddings, float32: transformers 5 returns them as the ``pooler_output`` of a model
    output (earlier versions as a bare tensor)."""
    return (features if isinstance(features, torch.Tensor) else features.pooler_output).float()


def _ok(df: pd.DataFrame) -> np.ndarray:
    return np.flatnonzero((df["status"] == "ok").to_numpy())


def sample_seed(seed: int, key: str, index: int) -> int:
    """Seed of caption ``index`` of sample ``key``: a hash, so it depends on nothing else (batch, actor, run)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class PerSampleNucleus:
    """A ``generate`` logits processor doing nucleus sampling in which every sequence draws from its own stream.

    ``uniforms[r, t]`` is sequence r's random number for new token t, drawn up front from a generator seeded by
    ``sample_seed``. The processor picks the token by inverse CDF over the top-p nucleus and returns logits that
    are -inf everywhere else, so generate's own multinomial (over a one-hot distribution) only copies the choice
    and the global RNG plays no part. Generation stays batched; only the draw is per sequence.
    """

    def __init__(self, uniforms: torch.Tensor, top_p: float):
        self.uniforms, self.top_p, self.start = uniforms, top_p, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:  # the prompt (or decoder start) length: token t of this call is input length - start
            self.start = input_ids.shape[1]
            self.uniforms = self.uniforms.to(scores.device)  # once, not a host-to-device copy per token
        t = input_ids.shape[1] - self.start
        probs = torch.softmax(scores.float(), -1)
        p, order = probs.sort(dim=-1, descending=True, stable=True)
        p = p * ((p.cumsum(-1) - p) < self.top_p)  # the nucleus: tokens before which less than top_p mass lies
        cdf = p.cumsum(-1)
        u = self.uniforms[:, t:t + 1] * cdf[:, -1:]
        pos = torch.searchsorted(cdf, u, right=True).clamp(max=p.shape[-1] - 1)
        pos = torch.minimum(pos, (p > 0).sum(-1, keepdim=True) - 1)  # rounding never leaves the nucleus
        token = order.gather(-1, pos)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


class Captioner:
    def __init__(self, cfg: dict):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = CaptionerConfig(**cfg)
        path = resolve(self.cfg.model)
        self.device, self.dtype = _device_dtype(self.cfg, "captioner")
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=self.dtype).eval().to(self.device)
        self.decoder_only = not self.model.config.get_text_config().is_encoder_decoder
        # BLIP's generate drops the prompt's closing [SEP] before decoding, so its output holds one prompt token less
        self.prompt_trim = 1 if self.model.config.model_type == "blip" else 0
        self.processor(images=[Image.new("RGB", (64, 64))], text=[self.cfg.prompt], return_tensors="pt")  # _WARM_UP

    def uniforms(self, keys: list[str]) -> torch.Tensor:
        """[len(keys) * K, max_length + 1] draws, in generate's order (image-major, K sequences per image)."""
        c = self.cfg
        return torch.stack([torch.rand(c.max_length + 1, generator=torch.Generator().manual_seed(sample_seed(
            c.seed, key, k))) for key in keys for k in range(c.num_captions)])

    def prepare(self, df: pd.DataFrame):
        """CPU part (decode + preprocess + the sampling draws), run ahead of ``apply`` in a thread."""
        ok = _ok(df)
        if not len(ok):
            return None
        sub = df.iloc[ok]
        inputs = self.processor(images=_images(sub), text=[self.cfg.prompt] * len(sub), return_tensors="pt")
        return inputs, self.uniforms(list(sub["key"]))

    @torch.no_grad()
    def apply(self, df: pd.DataFrame, prepared) -> pd.DataFrame:
        from transformers import LogitsProcessorList

        c = self.cfg
        out = [[] for _ in range(len(df))]
        ok = _ok(df)
        if len(ok):
            inputs, uniforms = prepared
            inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                      for k, v in inputs.items()}
            sampler = PerSampleNucleus(uniforms, c.top_p)
            # top_p=1, top_k=0, temperature=1: generate's own warpers are off, sampling is PerSampleNucleus's
            gen = self.model.generate(**inputs, do_sample=True, top_p=1.0, top_k=0, temperature=1.0,
                                      max_new_tokens=c.max_length, num_return_sequences=c.num_captions,
                                      logits_processor=LogitsProcessorList([sampler]))
            if self.decoder_only and "input_ids" in inputs:  # the output repeats the prompt: keep new tokens only
                gen = gen[:, inputs["input_ids"].shape[1] - self.prompt_trim:]
            texts = self.processor.batch_decode(gen, skip_special_tokens=True)
            prompt = c.prompt.strip().lower()
            for j, i in enumerate(ok):
                caps = [t.strip() for t in texts[j * c.num_captions:(j + 1) * c.num_captions]]
                caps = [t[len(prompt):] if prompt and t.lower().startswith(prompt) else t for t in caps]
                out[i] = [t for t in (clean_caption(t, 50) for t in caps) if t]
        df = df.copy()
        df["synthetic_captions"] = out
        return df

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.apply(df, self.prepare(df))


class CaptionFilter:
    def __init__(self, cfg: dict):
        from transformers import AutoConfig, AutoProcessor

        self.cfg = FilterConfig(**cfg)
        if self.cfg.mode not in ("topk", "itm"):
            raise ValueError(f"capfilt.filter.mode={self.cfg.mode!r}: expected 'topk' or 'itm'")
        path = resolve(self.cfg.model)
        self.device, self.dtype = _device_dtype(self.cfg, "filter")
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
        self.model = cls.from_pretrained(path, dtype=self.dtype).eval().to(self.device)
        self.tokenize(["warm-up"])  # _WARM_UP

    def tokenize(self, texts: list[str]):
        # padded to a fixed length: a caption's score must not depend on its batch neighbours
        tok = getattr(self.processor, "tokenizer", self.processor)
        return tok(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")

    @staticmethod
    def candidates(df: pd.DataFrame) -> list[list[str]]:
        syn = df["synthetic_captions"] if "synthetic_captions" in df else [[]] * len(df)
        return [[w, *list(s)] for w, s in zip(df["web_caption"], syn)]

    def prepare(self, df: pd.DataFrame):
        """CPU part: decoded, preprocessed images, tokenized candidates and each candidate's image index."""
        ok = _ok(df)
        if not len(ok):
            return None
        cands = self.candidates(df)
        image_processor = getattr(self.processor, "image_processor", self.processor)
        pix = image_processor(images=_images(df.iloc[ok]), return_tensors="pt")["pixel_values"]
        texts = self.tokenize([t for i in ok for t in cands[i]])
        return pix, texts, [j for j, i in enumerate(ok) for _ in cands[i]]

    @torch.no_grad()
    def scores(self, pix: torch.Tensor, t, pair_image: list[int]) -> np.ndarray:
        """Similarity (topk mode) or p(match) (itm mode) of each (image[pair_image[k]], text k) pair."""
        pix = pix.to(self.device, self.dtype)
        t = t.to(self.device)
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
            img = F.normalize(_projected(m.get_image_features(pixel_values=pix)), dim=-1)
            txt = F.normalize(_projected(m.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask)),
                              dim=-1)
            return (img[idx] * txt).sum(-1).cpu().numpy()
        if self.kind == "blip-2":  # ITC: max over the query cosines, as Blip2ForImageTextRetrieval computes it
            emb = m.vision_model(pixel_values=pix).last_hidden_state
            q = m.qformer(query_embeds=m.query_tokens.expand(emb.shape[0], -1, -1), encoder_hidden_states=emb,
                          encoder_attention_mask=torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
                          ).last_hidden_state
            img = F.normalize(m.vision_projection(q).float(), dim=-1)  # [I, Q, E]
            tx = m.qformer(query_embeds=m.embeddings(input_ids=t.input_ids), query_length=0,
                           attention_mask=t.attention_mask).last_hidden_state
            txt = F.normalize(m.text_projection(tx[:, 0]).float(), dim=-1)  # [T, E]
            return torch.einsum("tqe,te->tq", img[idx], txt).amax(-1).cpu().numpy()
        sims = m(pixel_values=pix[idx], input_ids=t.input_ids, attention_mask=t.attention_mask,
                 use_itm_head=False).itm_score  # BLIP: cosine matrix of the pairs
        return torch.diagonal(sims).float().cpu().numpy()

    def apply(self, df: pd.DataFrame, prepared) -> pd.DataFrame:
        c = self.cfg
        df = df.copy()
        cands = self.candidates(df)
        df["synthetic_captions"] = [x[1:] for x in cands]
        ok = _ok(df)
        scores = [[] for _ in range(len(df))]
        if len(ok):
            flat = self.scores(*prepared)
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

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.apply(df, self.prepare(df))


STAGES = {"captioner": Captioner, "filter": CaptionFilter}
# _WARM_UP: a fast tokenizer's first call with new padding/truncation settings writes them into the Rust
# tokenizer, which can fail ("Already borrowed", tokenizers#537) while another prepare thread is encoding; each
# stage makes that first call in its constructor, before any prepare thread starts.


class ShardStage:
    """Ray Data actor of a model stage: receives whole shards (dataprep/shard_rows.py) and runs the model on
    ``batch_size`` images at a time while ``prepare_threads`` threads decode and preprocess the next batches (so
    a GPU does not wait for JPEG decoding; PIL and the tokenizers release the GIL)."""

    def __init__(self, stage: str, cfg: dict):
        self.stage = STAGES[stage](cfg)
        self.batch_size = self.stage.cfg.batch_size
        self.threads = self.stage.cfg.prepare_threads
        if self.threads < 1:
            raise ValueError(f"capfilt.{stage}.prepare_threads={self.threads}: expected at least 1")
        self.pool = ThreadPoolExecutor(self.threads)

    def run(self, records: list[dict]) -> list[dict]:
        if not records:
            return records
        df = pd.DataFrame(records)
        chunks = [df.iloc[i:i + self.batch_size] for i in range(0, len(df), self.batch_size)]
        ahead = deque(self.pool.submit(self.stage.prepare, c) for c in chunks[:self.threads])
        out = []
        for i, chunk in enumerate(chunks):
            prepared = ahead.popleft().result()
            if i + self.threads < len(chunks):
                ahead.append(self.pool.submit(self.stage.prepare, chunks[i + self.threads]))
            out.append(self.stage.apply(chunk, prepared))
        return pd.concat(out).to_dict("records")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return per_shard(self.run, batch)


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
