"""The model work of evaluation as Ray Data batch inference on actor pools (GPUs where the cluster has them).

Each pass is a Dataset of small rows (indices, names, prompts) mapped by a pool of actors that load the model once:
- :class:`ImageEmbedder`: ONE ViT pass per image -> the cached image embeddings (for ITM) and ITC query features;
- :class:`TextEmbedder`: one text pass per caption -> ITC text features and the ITM token ids;
- :class:`ITMScorer`: the re-ranking pairs; it reads the cached image embeddings from the object store and runs
  only the Q-Former's multimodal (text) pass per pair, never the ViT;
- :class:`Generator`: captions or VQA answers (beam search) from a stage-2 model.
Every actor counts the images its ViT actually saw (a forward hook), so the cost is measured, not assumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.evaluation.image_source import ImageSource


@dataclass
class InferenceConfig:
    batch_size: int = 32  # images / texts per model call
    pair_batch_size: int = 128  # ITM pairs per model call
    actors: int = 1  # actors per pass (one model copy each)
    num_gpus: float = -1  # GPUs per actor; -1: 1 when the Ray cluster has GPUs, else 0
    num_cpus: float = 1
    dtype: str = "auto"  # frozen ViT/LLM of transformers folders: auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16
    # Cached image embeddings for ITM (ViT-g at 364 px: 677 x 1408 values per image; COCO 5k: 9.5 GB in fp16).
    cache_dtype: str = "auto"  # auto (float16 with GPUs, else float32) | float32 | float16


def resolve_gpus(cfg: InferenceConfig) -> float:
    if cfg.num_gpus >= 0:
        return cfg.num_gpus
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


class _ModelActor:
    def __init__(self, model_uri: str, stage: int, dtype: str, storage_cfg: dict | None):
        from pipeline import storage
        from pipeline.evaluation.models import load_model
        from pipeline.storage import StorageConfig

        if storage_cfg:
            storage.set_default(StorageConfig(**storage_cfg))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "fp16" if self.device.type == "cuda" else "fp32"
        self.model = load_model(model_uri, stage, dtype).to(self.device)
        self.vit_images = 0
        self.model.vision.register_forward_hook(self._count_vit)

    def _count_vit(self, module, args, output):
        self.vit_images += int(output.shape[0])

    def _take_vit_count(self) -> int:
        n, self.vit_images = self.vit_images, 0
        return n

    @staticmethod
    def _model_seconds(t0: float, n: int) -> np.ndarray:
        """This batch's model time spread over its rows (summed on the driver: time per row without actor start-up)."""
        return np.full(n, (time.perf_counter() - t0) / n)

    def _pixels(self, source: ImageSource, names, size: int) -> torch.Tensor:
        from pipeline.images import to_pixel_values

        pix = to_pixel_values(source.load([str(n) for n in names]), size or self.model.vision.image_size)
        return pix.to(self.device, next(self.model.vision.parameters()).dtype)


class ImageEmbedder(_ModelActor):
    def __init__(self, model_uri, source: ImageSource, image_size: int, dtype: str, storage_cfg: dict | None,
                 embeds_dtype: str = "float32"):
        super().__init__(model_uri, 1, dtype, storage_cfg)
        self.source, self.image_size, self.embeds_dtype = source, image_size, embeds_dtype

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()  # decoding included: it is part of the pass
        embeds, feats = self.model.image_features(self._pixels(self.source, batch["name"], self.image_size))
        n = self._take_vit_count()
        return {"idx": batch["idx"], "image_embeds": embeds.float().cpu().numpy().astype(self.embeds_dtype),
                "image_feats": feats.float().cpu().numpy(), "vit_images": np.full(len(batch["idx"]), n / len(batch["idx"])),
                "model_s": self._model_seconds(t0, len(batch["idx"]))}


class TextEmbedder(_ModelActor):
    def __init__(self, model_uri, max_len: int, dtype: str, storage_cfg: dict | None):
        super().__init__(model_uri, 1, dtype, storage_cfg)
        self.max_len = max_len

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        t = self.model.tokenizer([str(x) for x in batch["text"]], padding="max_length", truncation=True,
                                 max_length=self.max_len, return_tensors="pt")
        feat = self.model.text_features(t.input_ids.to(self.device), t.attention_mask.to(self.device))
        return {"idx": batch["idx"], "text_feat": feat.float().cpu().numpy(), "input_ids": t.input_ids.numpy(),
                "attention_mask": t.attention_mask.numpy(), "model_s": self._model_seconds(t0, len(batch["idx"]))}


class ITMScorer(_ModelActor):
    """ITM logit of "match" for (image, text) pairs, on the cached image embeddings."""

    def __init__(self, model_uri, cache: dict, dtype: str, storage_cfg: dict | None):
        import ray

        super().__init__(model_uri, 1, dtype, storage_cfg)
        # The refs sit inside a dict so Ray hands them over unresolved; each actor fetches them once.
        self.embeds, self.ids, self.mask = (ray.get(cache[k]) for k in ("image_embeds", "input_ids", "attention_mask"))

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        img, txt = batch["img"], batch["txt"]
        vision_dtype = next(self.model.vision.parameters()).dtype
        embeds = torch.from_numpy(np.ascontiguousarray(self.embeds[img])).to(self.device, vision_dtype)
        ids = torch.from_numpy(self.ids[txt]).to(self.device)
        mask = torch.from_numpy(self.mask[txt]).to(self.device)
        logits = self.model.itm_logits(ids, mask, embeds)
        return {"idx": batch["idx"], "itm": logits[:, 1].float().cpu().numpy(),
                "vit_images": np.full(len(img), self._take_vit_count() / len(img)),
                "text_passes": np.ones(len(img)), "model_s": self._model_seconds(t0, len(img))}


class Generator(_ModelActor):
    """Beam-search generation from a stage-2 model: captions (one row per image) or answers (one per question)."""

    def __init__(self, model_uri, source: ImageSource, image_size: int, dtype: str, storage_cfg: dict | None,
                 generate_kwargs: dict):
        super().__init__(model_uri, 2, dtype, storage_cfg)
        self.source, self.image_size, self.kwargs = source, image_size, generate_kwargs

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        pix = self._pixels(self.source, batch["name"], self.image_size)
        text = self.model.generate(pix, prompt=[str(p) for p in batch["prompt"]], **self.kwargs)
        return {"idx": batch["idx"], "text": np.array(text, dtype=object)}


def run_pass(columns: dict[str, np.ndarray], actor_cls, constructor_kwargs: dict, cfg: InferenceConfig,
             batch_size: int, name: str) -> tuple[dict[str, np.ndarray], float]:
    """Map ``columns`` through a pool of ``actor_cls`` actors; returns (output columns in input order, seconds)."""
    import pyarrow as pa
    import ray

    n = len(next(iter(columns.values())))
    # Enough blocks that every actor of the pool gets work, each a whole number of batches.
    per_block = max(batch_size, math.ceil(n / max(1, cfg.actors * 4) / batch_size) * batch_size)
    blocks = [pa.table({k: v[s:s + per_block] for k, v in columns.items()}) for s in range(0, n, per_block)]
    gpus = resolve_gpus(cfg)
    t0 = time.perf_counter()
    ds = ray.data.from_arrow(blocks).map_batches(
        actor_cls, fn_constructor_kwargs=constructor_kwargs, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.actors), num_gpus=gpus, num_cpus=cfg.num_cpus)
    parts: dict[str, list] = {}
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):
        for k, v in b.items():
            parts.setdefault(k, []).append(v)
    seconds = time.perf_counter() - t0
    out = {k: np.concatenate(v) for k, v in parts.items()}
    got = len(next(iter(out.values()))) if out else 0
    if got != n:
        raise RuntimeError(f"{name}: the inference pass returned {got} rows for {n}")
    if "idx" in out:  # back in input order (the pool may finish blocks out of order)
        order = np.argsort(out["idx"], kind="stable")
        out = {k: v[order] for k, v in out.items()}
    return out, seconds
