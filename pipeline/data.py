"""Training ingest: data-prep Parquet -> a deterministic per-epoch, per-rank sample order -> Ray Data decode +
augmentation in CPU tasks -> ``iter_torch_batches`` on each worker.

Ray Data in this Ray version cannot resume mid-epoch, so the order is ours: epoch ``e`` shuffles the files
and then the rows of each file with ``seed + e`` (file-local reads stay cheap), cuts the result into global
batches of ``batch_size * world_size``, and rank ``r`` takes slice ``r`` of every global batch. Resuming at
step ``k`` of an epoch starts at global batch ``k``: no sample is repeated or skipped. Augmentation and the
caption choice are seeded per (seed, epoch, key), so a sample looks the same whichever process decodes it.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline import storage
from pipeline.images import normalize


@dataclass
class DataConfig:
    uri: str = "???"  # data-prep output dir (its data/*.parquet), a glob of Parquet files, or WebDataset tars
    image_size: int = 224
    min_scale: float = 0.5  # RandomResizedCrop scale range (reference: 0.5-1.0), bicubic
    hflip: bool = True
    decode_batch_size: int = 32
    decode_concurrency: int = 1  # Ray Data decode tasks in flight per worker
    decode_num_cpus: float = 1.0  # CPUs each decode task reserves


def list_files(uri: str) -> list[str]:
    if any(c in uri for c in "*?["):
        return storage.glob(uri)
    if uri.endswith((".parquet", ".tar")):
        return [uri]
    files = storage.glob(storage.join(uri, "data", "*.parquet")) or storage.glob(storage.join(uri, "*.parquet")) \
        or storage.glob(storage.join(uri, "*.tar"))
    if not files:
        raise FileNotFoundError(f"data.uri {uri!r}: no data/*.parquet, *.parquet or *.tar files")
    return files


def _rows_of(uri: str) -> int:
    if uri.endswith(".parquet"):
        with storage.open_file(uri, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    return len(_tar_records(uri))


def index(uri: str) -> list[tuple[str, int]]:
    """(file, number of rows) for every training file, sorted by name."""
    return [(f, _rows_of(f)) for f in sorted(list_files(uri))]


def epoch_order(files: list[tuple[str, int]], seed: int, epoch: int) -> list[tuple[int, int]]:
    """The epoch's global sample order as (file index, row) pairs."""
    rng = np.random.default_rng([seed, epoch])
    order = []
    for fi in rng.permutation(len(files)):
        order += [(int(fi), int(r)) for r in rng.permutation(files[fi][1])]
    return order


def rank_slice(order: list, batch: int, world: int, rank: int, start_step: int = 0) -> list:
    """This rank's samples from global batch ``start_step`` on; the incomplete last global batch is dropped."""
    steps = len(order) // (batch * world)
    out = []
    for s in range(start_step, steps):
        g = s * batch * world + rank * batch
        out += order[g:g + batch]
    return out


def steps_per_epoch(files: list[tuple[str, int]], batch: int, world: int) -> int:
    return sum(n for _, n in files) // (batch * world)


def _tar_records(uri: str) -> list[dict]:
    from pipeline.records import read_tar

    out = []
    for r in read_tar(uri):
        caption = (r["caption"] or b"").decode("utf-8", "replace").strip()
        out.append({"key": r["key"], "jpg": r["image"], "kept_captions": [caption]})
    return out


class _Files:
    """A small per-process cache of decoded-from-storage files (reads are file-local by construction)."""

    def __init__(self, size: int = 4):
        self.size, self.cache = size, {}

    def get(self, uri: str) -> dict[str, list]:
        if uri not in self.cache:
            if len(self.cache) >= self.size:
                self.cache.pop(next(iter(self.cache)))
            if uri.endswith(".parquet"):
                with storage.open_file(uri, "rb") as f:
                    pf = pq.ParquetFile(io.BytesIO(f.read()))
                    cols = ["key", "jpg", "kept_captions"] + (["meta"] if "meta" in pf.schema_arrow.names else [])
                    t = pf.read(columns=cols)
                self.cache[uri] = t.to_pydict()
            else:
                recs = _tar_records(uri)
                self.cache[uri] = {k: [r[k] for r in recs] for k in ("key", "jpg", "kept_captions")}
        return self.cache[uri]


_FILES = _Files()


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator, min_scale: float) -> Image.Image:
    """torchvision's RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3), bicubic) on PIL."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    s = min(w, h)  # fallback: centre crop
    x, y = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.BICUBIC, box=(x, y, x + s, y + s))


def _question(d: dict, row: int) -> str:
    """A VQA record's question (``meta`` JSON, written by dataprep/annotations.py); "" for caption records."""
    meta = d.get("meta", [None] * (row + 1))[row]
    return str(json.loads(meta).get("question", "")) if meta else ""


def decode_batch(batch: dict, files: list[str], cfg: DataConfig, seed: int, train: bool = True) -> dict:
    """Ray Data UDF: {'file', 'row', 'epoch'} -> {'pixel_values' [N,3,S,S] float32, 'caption', 'question', 'key'}.

    For a VQA record 'caption' is one of its answers (drawn like a caption) and 'question' its question."""
    pix, caps, keys, questions = [], [], [], []
    for fi, row, epoch in zip(batch["file"], batch["row"], batch["epoch"]):
        d = _FILES.get(files[int(fi)])
        key = d["key"][int(row)]
        rng = np.random.default_rng([seed, int(epoch), zlib.crc32(key.encode())])
        img = Image.open(io.BytesIO(d["jpg"][int(row)])).convert("RGB")
        if train:
            img = random_resized_crop(img, cfg.image_size, rng, cfg.min_scale)
            if cfg.hflip and rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            img = img.resize((cfg.image_size, cfg.image_size), Image.BICUBIC)
        kept = list(d["kept_captions"][int(row)]) or [""]
        caps.append(str(kept[int(rng.integers(0, len(kept)))]))  # one of the kept captions per step
        questions.append(_question(d, int(row)))
        pix.append(normalize(np.asarray(img)))
        keys.append(key)
    return {"pixel_values": np.stack(pix), "caption": np.array(caps, dtype=object), "key": np.array(keys, dtype=object),
            "question": np.array(questions, dtype=object)}


def rank_batches(files: list[tuple[str, int]], cfg: DataConfig, seed: int, batch: int, world: int, rank: int,
                 epoch: int, start_step: int):
    """Yield this rank's batches of ``epoch`` from ``start_step`` on, decoded by Ray Data CPU tasks, in order."""
    import ray

    order = rank_slice(epoch_order(files, seed, epoch), batch, world, rank, start_step)
    if not order:
        return
    ctx = ray.data.DataContext.get_current()  # set before the dataset is made: it copies the context
    ctx.execution_options.preserve_order = True  # the order above is the contract
    ctx.enable_progress_bars = False  # one bar per worker per epoch would drown the training log
    items = [{"file": fi, "row": r, "epoch": epoch} for fi, r in order]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // max(batch, cfg.decode_batch_size)))
    ds = ds.map_batches(decode_batch, fn_kwargs={"files": [f for f, _ in files], "cfg": cfg, "seed": seed},
                        batch_size=cfg.decode_batch_size, concurrency=cfg.decode_concurrency,
                        num_cpus=cfg.decode_num_cpus)
    yield from ds.iter_torch_batches(batch_size=batch, drop_last=True, collate_fn=_collate)


def _collate(batch: dict) -> dict:
    import torch

    return {"pixel_values": torch.from_numpy(np.ascontiguousarray(batch["pixel_values"])),
            "caption": [str(c) for c in batch["caption"]], "key": [str(k) for k in batch["key"]],
            "question": [str(q) for q in batch["question"]]}

