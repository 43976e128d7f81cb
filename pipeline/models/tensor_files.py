"""Reading selected tensors of a safetensors checkpoint (single file or sharded with an index), one at a time.

Tensors are read with plain file reads into tensors they own, not through safetensors' mmap: pages of a mapped
file count in the process's resident memory while the mapping lives, so a mmap read (plus a cast) would hold
the stored copy and the cast copy at once. Here the peak is what was kept plus one tensor being cast.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

# safetensors dtype names (https://github.com/huggingface/safetensors, format spec)
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def checkpoint_file(folder: str, filename: str) -> str | None:
    """Local path of ``filename`` in a local folder or hub repo (downloading only that file), or None if absent."""
    if os.path.isdir(folder):
        path = os.path.join(folder, filename)
        return path if os.path.exists(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(folder, filename)
    except EntryNotFoundError:
        return None


def header(path: str) -> tuple[dict, int]:
    """(the header's tensor entries, byte offset where the data starts) of one safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        entries = json.loads(f.read(n))
    entries.pop("__metadata__", None)
    return entries, 8 + n


def files_with_prefix(folder: str, prefix: str) -> dict[str, list[str]]:
    """{local safetensors file: its keys starting with ``prefix``}; only the files holding such keys are fetched."""
    index = checkpoint_file(folder, SAFE_WEIGHTS_INDEX_NAME)
    if index is not None:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            if key.startswith(prefix):
                shards.setdefault(shard, []).append(key)
        out = {}
        for shard, keys in shards.items():
            path = checkpoint_file(folder, shard)
            if path is None:
                raise FileNotFoundError(f"{folder}: {SAFE_WEIGHTS_INDEX_NAME} names {shard}, which is missing")
            out[path] = keys
        return out
    single = checkpoint_file(folder, SAFE_WEIGHTS_NAME)
    if single is None:
        raise FileNotFoundError(f"{folder}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} (this loader reads "
                                "safetensors only; re-save the checkpoint with save_pretrained)")
    return {single: [k for k in header(single)[0] if k.startswith(prefix)]}


def read_tensors(path: str, keys: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` of the safetensors file ``path``, floating ones cast to ``dtype`` as they are read.

    A tensor kept in its stored dtype is read straight into its own storage; one to be cast is read into one
    scratch buffer reused for every tensor (fresh temporaries would fragment the heap between the kept tensors).
    """
    entries, start = header(path)
    for key in keys:
        if key not in entries:
            raise KeyError(f"{path}: no tensor {key}")
        if entries[key]["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {key} has dtype {entries[key]['dtype']}, which this reader does not read")
    casts = [k for k in keys if dtype is not None and DTYPES[entries[k]["dtype"]].is_floating_point
             and DTYPES[entries[k]["dtype"]] != dtype]
    sizes = [entries[k]["data_offsets"][1] - entries[k]["data_offsets"][0] for k in casts]
    scratch = torch.empty(max(sizes, default=0), dtype=torch.uint8)
    out = {}
    with open(path, "rb") as f:
        for key in keys:
            e = entries[key]
            begin, end = e["data_offsets"]
            stored = DTYPES[e["dtype"]]
            if key in casts:
                raw = scratch[:end - begin]
            else:
                out[key] = torch.empty(e["shape"], dtype=stored)
                raw = out[key].reshape(-1).view(torch.uint8)
            if raw.numel() != torch.Size(e["shape"]).numel() * stored.itemsize:
                raise ValueError(f"{path}: tensor {key} has {end - begin} bytes, not what dtype and shape need")
            f.seek(start + begin)
            if f.readinto(raw.numpy()) != raw.numel():  # little-endian bytes, as safetensors stores them
                raise ValueError(f"{path}: truncated while reading {key}")
            if key in casts:
                out[key] = raw.view(stored).view(e["shape"]).to(dtype)
    return out
