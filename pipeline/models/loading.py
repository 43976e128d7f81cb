"""``from_pretrained`` for hub ids, local folders and s3:// folders (copied to a local cache first)."""

from __future__ import annotations

import hashlib
import os
import tempfile

from pipeline import storage


def resolve(name_or_path: str) -> str:
    """A path or hub id that transformers' ``from_pretrained`` accepts."""
    if not storage.is_s3(name_or_path):
        return name_or_path
    cache = os.path.join(os.environ.get("BLIP2_RAY_CACHE", os.path.join(tempfile.gettempdir(), "blip2-ray-cache")),
                         hashlib.sha1(name_or_path.encode()).hexdigest()[:16])
    done = os.path.join(cache, ".complete")
    if not os.path.exists(done):
        storage.local_copy(name_or_path, cache)
        open(done, "w").close()
    return cache
