"""Decode and validate one record: reject what is broken, filter what is too small or too elongated,
clean the caption (reference ``blip_caption``), and re-encode the image at a fixed shorter side.

Returns a dict with ``status`` in {"ok", "rejected", "filtered"} and a ``reason``; it never raises. A URL
img2dataset failed on comes back as "source_failed" with its error message as the reason.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image

from dataprep.config import ValidateConfig

_PUNCT = re.compile(r"([.!\"()*#:;~])")


def clean_caption(text: str, max_words: int) -> str:
    """LAVIS ``blip_caption``: lowercase, punctuation .!"()*#:;~ to spaces, collapse whitespace, max_words words."""
    text = _PUNCT.sub(" ", text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    return " ".join(text.split()[:max_words])


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        scale = 256 if img.mode.startswith("I;16") else max(1, int(arr.max()) // 255 + 1)
        return Image.fromarray((arr // scale).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent areas on white
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")  # CMYK, L, 1, YCbCr, ...


def validate(rec: dict, cfg: ValidateConfig) -> dict:
    out = {"key": rec["key"], "source_shard": rec["source_shard"], "offset": rec["offset"], "meta": rec.get("meta") or "",
           "jpg": None, "width": 0, "height": 0, "orig_width": 0, "orig_height": 0, "web_caption": "",
           "status": "rejected", "reason": ""}
    if isinstance(rec.get("source_failed"), str):  # img2dataset failed on this URL: not a sample, counted apart
        return {**out, "status": "source_failed", "reason": rec["source_failed"]}
    image, caption = rec.get("image"), rec.get("caption")
    if image is None:
        return {**out, "reason": "missing_image"}
    if len(image) == 0:
        return {**out, "reason": "empty_image"}
    if caption is None:
        return {**out, "reason": "missing_caption"}
    try:
        text = bytes(caption).decode("utf-8")
    except UnicodeDecodeError:
        return {**out, "reason": "bad_utf8"}
    text = clean_caption(text, cfg.max_words)
    if not text:
        return {**out, "reason": "empty_caption"}
    out["web_caption"] = text

    Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(image))
            w, h = img.size
            if w * h > cfg.max_image_pixels:
                return {**out, "reason": "decompression_bomb"}
            out["orig_width"], out["orig_height"] = w, h
            if min(w, h) < cfg.min_size:
                return {**out, "status": "filtered", "reason": "too_small"}
            if max(w, h) / min(w, h) > cfg.max_aspect_ratio:
                return {**out, "status": "filtered", "reason": "aspect_ratio"}
            scale = min(1.0, cfg.resize_shorter_side / min(w, h))
            target = (max(1, round(w * scale)), max(1, round(h * scale)))
            if img.format == "JPEG":
                img.draft("RGB", target)  # decode at a reduced size: a big JPEG never decodes in full
            img.load()
            img = _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return {**out, "reason": "decompression_bomb"}
    except Exception:  # Pillow raises many types for corrupt/truncated/unknown data
        return {**out, "reason": "corrupt_image"}
    if img.size != target:
        img = img.resize(target, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    return {**out, "jpg": buf.getvalue(), "width": target[0], "height": target[1], "status": "ok"}
