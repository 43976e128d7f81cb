"""Training ingest: a manifest of files -> a deterministic per-epoch, per-rank read plan -> Ray Data decode +
augmentation in CPU tasks -> ``iter_torch_batches`` on each worker.

The order, with O(files) state and every sample read once per epoch:
  1. epoch ``e`` permutes the files (``default_rng([seed, e])``) and, inside each file, its row groups
     (``default_rng([seed, e, file])``); laid end to end they form the epoch's stream of rows;
  2. rank ``r`` takes the contiguous span ``[r * n, (r + 1) * n)`` of the stream, ``n = steps * batch *
     grad_accum``; the remainder past ``world * n`` is dropped, so every rank runs the same number of steps and a
     file is read by at most two ranks (when no file is longer than a span);
  3. the span is cut at row-group boundaries into windows of at least ``shuffle_window`` rows, and the rows of
     window ``j`` are shuffled with ``default_rng([seed, e, world, r, j])``.
A decode task gets one window as a few ``(file, row group, first row, end row)`` pieces, reads only those row
groups and columns, and yields decoded batches. Resuming at step ``k`` of an epoch skips to sample ``k * batch
* grad_accum`` of the span: the window holding it is found from the plan, nothing is replayed. Ray Data in this
Ray version cannot resume mid-epoch, hence our own order. Augmentation and the caption choice are seeded per
(seed, epoch, key), so a sample looks the same whichever process decodes it.
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
from pipeline.manifest import FileEntry, has_manifest, load_index, write_manifest
from pipeline.records import read_tar

COLUMNS = ["key", "jpg", "kept_captions"]  # all that training reads of a data-prep file


@dataclass
class DataConfig:
    uri: str = "???"  # folder with manifest.json or data/*.parquet, a glob / list of Parquet files, or tars
    image_size: int = 224
    min_scale: float = 0.5  # RandomResizedCrop scale range (reference: 0.5-1.0), bicubic
    hflip: bool = True
    shuffle_window: int = 4096  # rows shuffled together; a decode task holds one window's compressed rows
    decode_batch_size: int = 32  # images per decoded block a decode task yields
    decode_concurrency: int = 1  # Ray Data decode tasks (windows) in flight per worker
    decode_num_cpus: float = 1.0  # CPUs each decode task reserves


class Index:
    """The training files as flat arrays (paths, rows per file, rows per row group): O(files) memory."""

    def __init__(self, entries: list[FileEntry]):
        self.paths = [e.path for e in entries]
        self.rows = np.fromiter((e.rows for e in entries), np.int64, len(entries))
        counts = np.fromiter((len(e.row_groups) or 1 for e in entries), np.int64, len(entries))
        self.group_offset = np.concatenate([[0], np.cumsum(counts)])  # file f's groups: [offset[f], offset[f+1])
        self.group_rows = np.fromiter((n for e in entries for n in (e.row_groups or [e.rows])), np.int64,
                                      int(self.group_offset[-1]))
        per_file = np.add.reduceat(self.group_rows, self.group_offset[:-1]) if len(entries) else self.rows
        bad = np.flatnonzero(per_file != self.rows)
        if len(bad):
            e = entries[int(bad[0])]
            raise ValueError(f"{e.path}: row groups {e.row_groups} do not add up to its {e.rows} rows (stale manifest?)")

    @classmethod
    def load(cls, uri: str) -> Index:
        return cls(load_index(uri))

    def groups(self, f: int) -> np.ndarray:
        return self.group_rows[self.group_offset[f]:self.group_offset[f + 1]]

    @property
    def total(self) -> int:
        return int(self.rows.sum())


def index_location(data_uri: str, run_uri: str) -> str:
    """The folder whose manifest.json the workers read: ``data_uri`` if it has one, else the run dir, where the
    driver writes the result of its one listing pass (so the workers never list or open the data files)."""
    if has_manifest(data_uri):
        return data_uri
    write_manifest(run_uri, load_index(data_uri))
    return run_uri


def steps_per_epoch(index: Index, samples_per_step: int, world: int) -> int:
    """Steps every rank runs in an epoch; ``samples_per_step`` is one rank's batch * grad_accum."""
    return index.total // (samples_per_step * world)


@dataclass
class RankPlan:
    """One rank's epoch: pieces (file, group, first, end, first file row) in stream order, cut into windows."""

    seed: int
    epoch: int
    world: int
    rank: int
    pieces: np.ndarray  # [P, 5] int64
    window_piece: np.ndarray  # [W + 1] window j holds pieces[window_piece[j]:window_piece[j + 1]]
    window_start: np.ndarray  # [W + 1] first sample position of window j in the rank's span (last: span length)


def rank_plan(index: Index, seed: int, epoch: int, world: int, rank: int, samples_per_rank: int,
              window: int) -> RankPlan:
    perm = np.random.default_rng([seed, epoch]).permutation(len(index.paths))
    ends = np.cumsum(index.rows[perm])
    lo, hi = rank * samples_per_rank, (rank + 1) * samples_per_rank
    pieces = []
    for i in range(int(np.searchsorted(ends, lo, side="right")), len(perm)):
        f = int(perm[i])
        pos = int(ends[i] - index.rows[f])
        if pos >= hi:
            break
        sizes = index.groups(f)
        first_row = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        order = np.random.default_rng([seed, epoch, f]).permutation(len(sizes)) if len(sizes) > 1 else [0]
        for g in order:
            n = int(sizes[g])
            a, b = max(lo - pos, 0), min(hi - pos, n)
            if a < b:
                pieces.append((f, int(g), a, b, int(first_row[g]) + a))
            pos += n
    pieces_arr = np.array(pieces, np.int64).reshape(-1, 5)
    cuts, starts, acc, total = [0], [0], 0, 0
    for p, (_, _, a, b, _) in enumerate(pieces_arr):
        acc += int(b - a)
        if acc >= window:  # windows end on row-group boundaries: no row group is read for two windows
            total += acc
            cuts.append(p + 1)
            starts.append(total)
            acc = 0
    if acc:
        cuts.append(len(pieces_arr))
        starts.append(total + acc)
    return RankPlan(seed, epoch, world, rank, pieces_arr, np.array(cuts, np.int64), np.array(starts, np.int64))


def window_items(plan: RankPlan, index: Index, start: int = 0) -> list[dict]:
    """The decode tasks' inputs from sample position ``start`` of the span on: one small dict per window."""
    items = []
    first = int(np.searchsorted(plan.window_start, start, side="right")) - 1
    for j in range(max(first, 0), len(plan.window_start) - 1):
        ps = plan.pieces[plan.window_piece[j]:plan.window_piece[j + 1]]
        files = sorted({int(f) for f in ps[:, 0]})
        local = {f: k for k, f in enumerate(files)}
        items.append({"seed": [plan.seed, plan.epoch, plan.world, plan.rank, j], "epoch": plan.epoch,
                      "skip": max(start - int(plan.window_start[j]), 0), "files": [index.paths[f] for f in files],
                      "pieces": [[local[int(f)], int(g), int(a), int(b), int(r)] for f, g, a, b, r in ps]})
    return items


def window_order(item: dict) -> np.ndarray:
    """Positions, in the window's concatenated pieces, of the samples this item yields, in order."""
    n = sum(b - a for _, _, a, b, _ in item["pieces"])
    return np.random.default_rng(item["seed"]).permutation(n)[item["skip"]:]


def sample_order(item: dict) -> list[tuple[str, int]]:
    """(file, row) of each sample an item yields, in order (what the decode task reads, for tests and tools)."""
    src = [(item["files"][f], r + k) for f, _, a, b, r in item["pieces"] for k in range(b - a)]
    return [src[i] for i in window_order(item)]


_FS: dict = {}  # one pyarrow filesystem per process and kind: an S3 client is costly to make


def _pyarrow_fs(uri: str):
    kind = "s3" if storage.is_s3(uri) else "local"
    if kind not in _FS:
        _FS[kind] = storage.pyarrow_filesystem(uri)[0]
    return _FS[kind], uri.split("://", 1)[1] if kind == "s3" else storage.filesystem(uri)[1]


_FOOTERS: dict = {}  # Parquet footers this process has read, oldest first: the windows of a file share it


def _open_parquet(path: str) -> pq.ParquetFile:
    fs, p = _pyarrow_fs(path)
    pf = pq.ParquetFile(fs.open_input_file(p), metadata=_FOOTERS.get(path))
    if path not in _FOOTERS:
        _FOOTERS[path] = pf.metadata
        if len(_FOOTERS) > 256:
            _FOOTERS.pop(next(iter(_FOOTERS)))
    return pf


def _tar_rows(uri: str) -> dict[str, list]:
    recs = [r for r in read_tar(uri) if r["image"] is not None]  # the manifest counts keys with an image
    return {"key": [r["key"] for r in recs], "jpg": [r["image"] for r in recs],
            "kept_captions": [[(r["caption"] or b"").decode("utf-8", "replace").strip()] for r in recs],
            "question": [_question(r["meta"]) for r in recs]}


def _question(meta: str | None) -> str:
    """A VQA record's question (its ``meta`` JSON, as dataprep/annotations.py writes it); "" for captions."""
    try:
        return str(json.loads(meta).get("question", "")) if meta else ""
    except (ValueError, AttributeError):
        return ""


def read_window(item: dict) -> dict[str, list]:
    """The window's rows (its pieces concatenated): only its row groups and the training columns are read."""
    out: dict[str, list] = {c: [] for c in [*COLUMNS, "question"]}
    opened: dict[int, pq.ParquetFile] = {}
    try:
        for f, g, a, b, _ in item["pieces"]:
            path = item["files"][f]
            if path.endswith(".parquet"):
                if f not in opened:
                    opened[f] = _open_parquet(path)
                has_meta = "meta" in opened[f].schema_arrow.names  # VQA records carry their question there
                cols = opened[f].read_row_groups([g], columns=COLUMNS + ["meta"] * has_meta).slice(a, b - a).to_pydict()
                cols["question"] = [_question(m) for m in cols.pop("meta", [None] * (b - a))]
            else:
                cols = {k: v[a:b] for k, v in _tar_rows(path).items()}
            for c in out:
                out[c] += cols[c]
    finally:
        for pf in opened.values():
            pf.close(force=True)  # we opened the file: close it too
    return out


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


def decode_samples(keys: list[str], jpgs: list[bytes], captions: list, epoch: int, cfg: DataConfig, seed: int,
                   train: bool = True, questions: list[str] | None = None) -> dict:
    """Decode + augment: -> {'pixel_values' [N,3,S,S] float32, 'caption', 'question', 'key'}, seeded per
    (seed, epoch, key). For a VQA record 'caption' is one of its answers and 'question' its question."""
    pix, caps = [], []
    for key, jpg, kept in zip(keys, jpgs, captions):
        rng = np.random.default_rng([seed, int(epoch), zlib.crc32(key.encode())])
        img = Image.open(io.BytesIO(jpg)).convert("RGB")
        if train:
            img = random_resized_crop(img, cfg.image_size, rng, cfg.min_scale)
            if cfg.hflip and rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            img = img.resize((cfg.image_size, cfg.image_size), Image.BICUBIC)
        kept = list(kept) or [""]
        caps.append(str(kept[int(rng.integers(0, len(kept)))]))  # one of the kept captions per step
        pix.append(normalize(np.asarray(img)))
    return {"pixel_values": np.stack(pix), "caption": np.array(caps, dtype=object),
            "key": np.array(list(keys), dtype=object),
            "question": np.array(list(questions) if questions is not None else [""] * len(caps), dtype=object)}


def decode_windows(batch: dict, cfg: DataConfig, seed: int):
    """Ray Data UDF (a generator): each input row is one window (JSON); yields its decoded samples in order."""
    for desc in batch["window"]:
        item = json.loads(desc)
        rows = read_window(item)
        order = window_order(item)
        for c in range(0, len(order), cfg.decode_batch_size):
            idx = order[c:c + cfg.decode_batch_size]
            yield decode_samples([rows["key"][i] for i in idx], [rows["jpg"][i] for i in idx],
                                 [rows["kept_captions"][i] for i in idx], item["epoch"], cfg, seed,
                                 questions=[rows["question"][i] for i in idx])


def rank_batches(index: Index, cfg: DataConfig, seed: int, batch: int, grad_accum: int, world: int, rank: int,
                 epoch: int, start_step: int):
    """Yield this rank's micro-batches of ``epoch`` from optimizer step ``start_step`` on, decoded by Ray Data."""
    import ray

    per_rank = steps_per_epoch(index, batch * grad_accum, world) * batch * grad_accum
    plan = rank_plan(index, seed, epoch, world, rank, per_rank, cfg.shuffle_window)
    items = window_items(plan, index, start_step * batch * grad_accum)
    if not items:
        return
    ctx = ray.data.DataContext.get_current()  # set before the dataset is made: it copies the context
    ctx.execution_options.preserve_order = True  # the order above is the contract
    ctx.enable_progress_bars = False  # one bar per worker per epoch would drown the training log
    ds = ray.data.from_items([{"window": json.dumps(it)} for it in items], override_num_blocks=len(items))
    ds = ds.map_batches(decode_windows, fn_kwargs={"cfg": cfg, "seed": seed}, batch_size=1,
                        concurrency=cfg.decode_concurrency, num_cpus=cfg.decode_num_cpus)
    yield from ds.iter_torch_batches(batch_size=batch, drop_last=True, collate_fn=_collate)


def _collate(batch: dict) -> dict:
    import torch

    return {"pixel_values": torch.from_numpy(np.ascontiguousarray(batch["pixel_values"])),
            "caption": [str(c) for c in batch["caption"]], "key": [str(k) for k in batch["key"]],
            "question": [str(q) for q in batch["question"]]}
