"""Photo-like JPEGs for the data-prep benches: synthetic scenes with per-pixel noise, JPEG q90, so that
decoding costs what a web photo of that size costs. Sample i depends only on i."""

from __future__ import annotations

import io
import os
import tarfile


def photo_like_sample(i: int, size: int) -> dict:
    """{"key", "jpg" (size x 4/3 size), "txt"} of sample i."""
    import numpy as np
    from PIL import Image

    from demo.synthetic import SyntheticConfig, make_sample

    s = make_sample(SyntheticConfig(image_size=size), "train", i)
    img = np.asarray(Image.open(io.BytesIO(s["jpg"])), dtype=np.int16)
    img = np.clip(img + np.random.default_rng(i).integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).resize((size * 4 // 3, size)).save(buf, format="JPEG", quality=90)
    return {"key": s["key"], "jpg": buf.getvalue(), "txt": s["txt"]}


def photo_like_shards(out: str, n: int, size: int, per_shard: int = 100) -> None:
    """img2dataset-style WebDataset tars of n photo-like samples."""
    os.makedirs(out, exist_ok=True)
    for shard in range(0, n, per_shard):
        with tarfile.open(f"{out}/{shard // per_shard:05d}.tar", "w") as tar:
            for i in range(shard, min(n, shard + per_shard)):
                s = photo_like_sample(i, size)
                for ext, data in (("jpg", s["jpg"]), ("txt", s["txt"].encode())):
                    info = tarfile.TarInfo(f"{s['key']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
