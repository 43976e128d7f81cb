"""Record formats shared by data prep (which writes them) and training / evaluation (which read them).

``OUTPUT_SCHEMA`` is the Parquet schema of data prep's kept records; :func:`read_tar` reads WebDataset tars in
img2dataset's layout, the other format training and evaluation accept directly.
"""

from __future__ import annotations

import tarfile

import pyarrow as pa

from pipeline import storage

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

OUTPUT_SCHEMA = pa.schema([
    ("key", pa.string()), ("jpg", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
    ("web_caption", pa.string()), ("synthetic_captions", pa.list_(pa.string())),
    ("candidate_scores", pa.list_(pa.float32())), ("kept_captions", pa.list_(pa.string())),
    ("web_caption_kept", pa.bool_()), ("source_shard", pa.string()), ("offset", pa.int64()),
    ("orig_width", pa.int32()), ("orig_height", pa.int32()), ("meta", pa.string()),
])


def read_tar(uri: str) -> list[dict]:
    """Every record of a WebDataset tar (img2dataset layout: KEY.jpg/.txt/.json) as
    {key, image, caption (bytes), meta (str), source_shard, offset}, streamed without a local copy."""
    groups: dict[str, dict] = {}
    order: list[str] = []
    with storage.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, ext = base.split(".", 1)
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext.lower()] = tar.extractfile(m).read()
    out = []
    for i, key in enumerate(order):
        g = groups[key]
        image = next((g[e] for e in IMAGE_EXTS if e in g), None)
        out.append({"key": key, "image": image, "caption": g.get("txt"), "meta": (g.get("json") or b"").decode(
            "utf-8", "replace"), "source_shard": uri, "offset": i})
    return out
