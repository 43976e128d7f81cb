"""One way to reach any URI: local path, file:// or s3:// (with an optional endpoint override).

fsspec/s3fs for Python I/O and the matching pyarrow filesystem for Ray Data. Credentials are
whatever botocore finds (environment, profile, instance role); they are never logged or stored.

Every whole-object S3 operation here (read, write, list, exists, remove, upload, download) is retried on
transient errors with exponential backoff (``StorageConfig.retry_*``); after the last try it raises
:class:`StorageError` naming the operation and the URI. botocore's and s3fs's own retry loops are turned off so
that this is the one policy, with one log line per retry.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import pyarrow.fs as pafs


@dataclass
class StorageConfig:
    """Where object storage lives. Credentials come from the standard AWS env/profile, never from here."""

    endpoint_url: str | None = None  # MinIO / moto / other S3-compatible stores
    region: str | None = None
    anon: bool = False
    # Transient S3 errors (connection refused or reset, timeouts, 5xx, throttling) are retried per operation:
    # up to retry_attempts tries in all, waiting retry_backoff_s, then twice that, ... capped at retry_backoff_max_s.
    retry_attempts: int = 6
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0


_DEFAULT = StorageConfig(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
T = TypeVar("T")


class StorageError(OSError):
    """A storage operation still failed after its retries (the message names the operation and the URI)."""


def set_default(cfg: StorageConfig | None) -> None:
    """Make ``cfg`` the storage settings used when a call passes none (jobs call this once)."""
    global _DEFAULT
    if cfg is not None:
        _DEFAULT = StorageConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(StorageConfig)})
        if cfg.endpoint_url:
            # Ray workers and pyarrow pick the endpoint up from here too.
            os.environ["AWS_ENDPOINT_URL"] = cfg.endpoint_url


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for ``uri``."""
    cfg = cfg or _DEFAULT
    if is_s3(uri):
        # One try each in botocore and s3fs: with their loops on, a refused connection took ~9 s of hidden retries
        # before ours saw it.
        kwargs: dict[str, Any] = {"anon": cfg.anon, "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        client: dict[str, Any] = {}
        if cfg.endpoint_url:
            client["endpoint_url"] = cfg.endpoint_url
        if cfg.region:
            client["region_name"] = cfg.region
        if client:
            kwargs["client_kwargs"] = client
        fs = fsspec.filesystem("s3", **kwargs)
        fs.retries = 1  # a class attribute in s3fs, not an argument
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


# Errors that another try cannot fix. Everything else (connection refused or reset, timeouts, 5xx as
# EREMOTEIO/EBUSY/EIO, throttling) counts as transient.
_PERMANENT = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError,
              ValueError, TypeError, KeyError)
_PERMANENT_ERRNO = {errno.EINVAL, errno.EPERM, errno.ENOSYS, errno.ENOTEMPTY, errno.ENAMETOOLONG, errno.EMSGSIZE}
_jitter = random.Random()  # own generator: the training loop's `random` state is checkpointed and must not move


def _transient(e: BaseException) -> bool:
    if isinstance(e, _PERMANENT) or getattr(e, "errno", None) in _PERMANENT_ERRNO:
        return False
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "ParamValidationError"):
        return False
    status = (getattr(e, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return not (isinstance(status, int) and 400 <= status < 500 and status not in (408, 429))


def _scrub(text: str) -> str:
    """An error message safe to log: no credential values, no signed-URL query strings."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        if os.environ.get(var):
            text = text.replace(os.environ[var], "***")
    return re.sub(r"(X-Amz-[A-Za-z]+|Signature|Credential|AWSAccessKeyId)=[^&\s\"']+", r"\1=***", text)


def with_retries(op: str, uri: str, fn: Callable[[], T], cfg: StorageConfig | None = None) -> T:
    """``fn()`` with the S3 retry policy of ``cfg`` (local URIs: one try; their errors are not transient)."""
    cfg = cfg or _DEFAULT
    attempts = max(1, cfg.retry_attempts) if is_s3(uri) else 1
    for i in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not _transient(e):
                raise
            msg = _scrub(f"{type(e).__name__}: {e}")
            if i == attempts:
                raise StorageError(f"storage: {op} {uri} failed after {attempts} attempt(s): {msg}") from e
            wait = min(cfg.retry_backoff_s * 2 ** (i - 1), cfg.retry_backoff_max_s) * _jitter.uniform(0.8, 1.0)
            # stderr, not logging: Ray workers forward it to the driver's console whatever logging setup they have
            print(f"[storage] {op} {uri} failed (attempt {i}/{attempts}: {msg}); retrying in {wait:.1f} s",
                  file=sys.stderr, flush=True)
            if is_s3(uri):
                filesystem(uri, cfg)[0].invalidate_cache()  # a listing cached before the fault may be stale
            time.sleep(wait)
    raise AssertionError("unreachable")


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
    def read() -> bytes:
        with open_file(uri, "rb", cfg) as f:
            return f.read()

    return with_retries("read", uri, read, cfg)


def read_text(uri: str, cfg: StorageConfig | None = None) -> str:
    return read_bytes(uri, cfg).decode("utf-8")


def write_bytes(uri: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    """Write ``data`` so that a reader never sees a partial file (local: temp file + rename)."""
    fs, path = filesystem(uri, cfg)
    if is_s3(uri):  # an S3 PUT is atomic already
        with_retries("write", uri, lambda: fs.pipe_file(path, data), cfg)
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
    if not is_s3(uri):
        return fs.exists(path)

    def check() -> bool:
        # s3fs's exists() answers False on any error; info() lets a connection error through to the retries.
        # No cached listing: other processes (the other ranks) write the objects asked about.
        fs.invalidate_cache(path)
        try:
            fs.info(path)
            return True
        except FileNotFoundError:
            return False

    return with_retries("exists", uri, check, cfg)


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
        names = with_retries("list", uri, lambda: fs.ls(path, detail=False), cfg)
    except FileNotFoundError:
        return []
    return sorted(_unpath(uri, n) for n in names if n.rstrip("/") != path.rstrip("/"))


def glob(pattern: str, cfg: StorageConfig | None = None) -> list[str]:
    """Sorted full URIs matching a glob (``*``, ``**``, ``?``, ``[..]``)."""
    fs, path = filesystem(pattern, cfg)
    if is_s3(pattern):
        fs.invalidate_cache()
    return sorted(_unpath(pattern, p) for p in with_retries("glob", pattern, lambda: fs.glob(path), cfg))


def remove(uri: str, recursive: bool = True, cfg: StorageConfig | None = None) -> None:
    fs, path = filesystem(uri, cfg)
    if exists(uri, cfg):
        with_retries("remove", uri, lambda: fs.rm(path, recursive=recursive), cfg)


def local_copy(uri: str, dest_dir: str, cfg: StorageConfig | None = None) -> str:
    """Copy a file or directory tree to ``dest_dir`` (for from_pretrained on s3:// models); return the path."""
    if not is_s3(uri):
        return filesystem(uri, cfg)[1]
    fs, path = filesystem(uri, cfg)
    os.makedirs(dest_dir, exist_ok=True)
    if with_retries("stat", uri, lambda: fs.isdir(path), cfg):
        with_retries("download", uri, lambda: fs.get(path.rstrip("/") + "/", dest_dir.rstrip("/") + "/",
                                                     recursive=True), cfg)
        return dest_dir
    target = os.path.join(dest_dir, os.path.basename(path))
    with_retries("download", uri, lambda: fs.get(path, target), cfg)
    return target


def upload_dir(local_dir: str, uri: str, cfg: StorageConfig | None = None) -> None:
    """Copy a local directory tree to ``uri`` (local or s3://).

    On S3 each file is its own retried PUT, so a fault costs one file's upload, not the whole tree's.
    """
    fs, path = filesystem(uri, cfg)
    if is_s3(uri):
        for d, _, names in os.walk(local_dir):
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(d, name), local_dir).replace(os.sep, "/")
                with_retries("upload", join(uri, rel),
                             functools.partial(fs.put_file, os.path.join(d, name), join(path, rel)), cfg)
    else:
        import shutil

        shutil.copytree(local_dir, path, dirs_exist_ok=True)
