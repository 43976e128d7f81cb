"""One way to reach any URI: local path, file:// or s3:// (with an optional endpoint override).

fsspec/s3fs for Python I/O and the matching pyarrow filesystem for Ray Data. Credentials are
whatever botocore finds (environment, profile, instance role); they are never logged or stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs


@dataclass
class StorageConfig:
    """Where object storage lives. Credentials come from the standard AWS env/profile, never from here."""

    endpoint_url: str | None = None  # MinIO / moto / other S3-compatible stores
    region: str | None = None
    anon: bool = False

_DEFAULT = StorageConfig(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def set_default(cfg: StorageConfig | None) -> None:
    """Make ``cfg`` the storage settings used when a call passes none (jobs call this once)."""
    global _DEFAULT
    if cfg is not None:
        _DEFAULT = StorageConfig(**{k: getattr(cfg, k) for k in ("endpoint_url", "region", "anon")})
        if cfg.endpoint_url:
            # Ray workers and pyarrow pick the endpoint up from here too.
            os.environ["AWS_ENDPOINT_URL"] = cfg.endpoint_url


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for ``uri``."""
    cfg = cfg or _DEFAULT
    if is_s3(uri):
        kwargs: dict[str, Any] = {"anon": cfg.anon}
        client: dict[str, Any] = {}
        if cfg.endpoint_url:
            client["endpoint_url"] = cfg.endpoint_url
        if cfg.region:
            client["region_name"] = cfg.region
        if client:
            kwargs["client_kwargs"] = client
        fs = fsspec.filesystem("s3", **kwargs)
        return fs, uri.split("://", 1)[1]
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return fsspec.filesystem("file"), os.path.abspath(path)


def pyarrow_filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) for Ray Data's ``filesystem=`` argument."""
    cfg = cfg or _DEFAULT
    if is_s3(uri):
        kwargs: dict[str, Any] = {"anonymous": cfg.anon}
        if cfg.endpoint_url:
            scheme, _, host = cfg.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if cfg.region:
            kwargs["region"] = cfg.region
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1]
    _, path = filesystem(uri, cfg)
    return pafs.LocalFileSystem(), path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _unpath(uri: str, path: str) -> str:
    return ("s3://" + path) if is_s3(uri) else path


def open_file(uri: str, mode: str = "rb", cfg: StorageConfig | None = None):
    fs, path = filesystem(uri, cfg)
    if "w" in mode:
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
    return fs.open(path, mode)


def read_bytes(uri: str, cfg: StorageConfig | None = None) -> bytes:
    with open_file(uri, "rb", cfg) as f:
        return f.read()


def read_text(uri: str, cfg: StorageConfig | None = None) -> str:
    return read_bytes(uri, cfg).decode("utf-8")


def write_bytes(uri: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    """Write ``data`` so that a reader never sees a partial file (local: temp file + rename)."""
    fs, path = filesystem(uri, cfg)
    if is_s3(uri):  # an S3 PUT is atomic already
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(uri: str, text: str, cfg: StorageConfig | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), cfg)


def exists(uri: str, cfg: StorageConfig | None = None) -> bool:
    fs, path = filesystem(uri, cfg)
    return fs.exists(path)


def makedirs(uri: str, cfg: StorageConfig | None = None) -> None:
    fs, path = filesystem(uri, cfg)
    if not is_s3(uri):
        fs.makedirs(path, exist_ok=True)


def listdir(uri: str, cfg: StorageConfig | None = None) -> list[str]:
    """Full URIs of the direct children of ``uri`` (sorted); [] if it does not exist."""
    fs, path = filesystem(uri, cfg)
    if is_s3(uri):
        fs.invalidate_cache(path)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(_unpath(uri, n) for n in names if n.rstrip("/") != path.rstrip("/"))


def glob(pattern: str, cfg: StorageConfig | None = None) -> list[str]:
    """Sorted full URIs matching a glob (``*``, ``**``, ``?``, ``[..]``)."""
    fs, path = filesystem(pattern, cfg)
    if is_s3(pattern):
        fs.invalidate_cache()
    return sorted(_unpath(pattern, p) for p in fs.glob(path))


def remove(uri: str, recursive: bool = True, cfg: StorageConfig | None = None) -> None:
    fs, path = filesystem(uri, cfg)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def local_copy(uri: str, dest_dir: str, cfg: StorageConfig | None = None) -> str:
    """Copy a file or directory tree to ``dest_dir`` (for from_pretrained on s3:// models); return the path."""
    if not is_s3(uri):
        return filesystem(uri, cfg)[1]
    fs, path = filesystem(uri, cfg)
    os.makedirs(dest_dir, exist_ok=True)
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", dest_dir.rstrip("/") + "/", recursive=True)
        return dest_dir
    target = os.path.join(dest_dir, os.path.basename(path))
    fs.get(path, target)
    return target


def upload_dir(local_dir: str, uri: str, cfg: StorageConfig | None = None) -> None:
    """Copy a local directory tree to ``uri`` (local or s3://)."""
    fs, path = filesystem(uri, cfg)
    if is_s3(uri):
        fs.put(local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
    else:
        import shutil

        shutil.copytree(local_dir, path, dirs_exist_ok=True)
