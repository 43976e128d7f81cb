"""``from_pretrained`` for hub ids, local folders and s3:// folders (copied to a local cache first)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from pipeline import storage


def resolve(name_or_path: str) -> str:
    """A path or hub id that transformers' ``from_pretrained`` accepts (an s3:// folder: its local copy)."""
    if not storage.is_s3(name_or_path):
        return name_or_path
    cache = os.path.join(os.environ.get("BLIP2_RAY_CACHE", os.path.join(tempfile.gettempdir(), "blip2-ray-cache")),
                         hashlib.sha1(name_or_path.encode()).hexdigest()[:16])
    if os.path.exists(os.path.join(cache, ".complete")):
        return cache
    # Downloaded beside the cache and renamed into place: several workers of a node resolve the same folder at
    # once, and none may read a copy that another is still writing.
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    part = tempfile.mkdtemp(prefix=os.path.basename(cache) + ".part-", dir=os.path.dirname(cache))
    storage.local_copy(name_or_path, part)
    open(os.path.join(part, ".complete"), "w").close()
    try:
        os.rename(part, cache)
    except OSError:  # a folder is in place: another process's complete copy, or a partial one of older code
        if os.path.exists(os.path.join(cache, ".complete")):
            shutil.rmtree(part, ignore_errors=True)
        else:
            shutil.rmtree(cache)
            os.rename(part, cache)
    return cache
