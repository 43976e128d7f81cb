"""A shard manifest: one small JSON file that lists a data set's files with their rows, bytes and row groups.

Training reads it instead of opening every file (12,900 Parquet footers at the paper's scale). Data prep writes it
as ``<output>/manifest.json`` for its ``<output>/data/*.parquet``; for any other folder, glob or file list of
Parquet files or WebDataset tars, ``python -m pipeline.manifest <uri> [--out DIR]`` builds one in a single
listing pass (Parquet: footer only; tars: members counted while streaming, or img2dataset's ``_stats.json``).

Paths are stored relative to the manifest's folder, so a data set can be copied or moved as a whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.records import IMAGE_EXTS

MANIFEST_NAME = "manifest.json"
_VERSION = 1


@dataclass
class FileEntry:
    path: str  # absolute URI (local path or s3://...)
    rows: int
    bytes: int
    row_groups: list[int] = field(default_factory=list)  # rows per Parquet row group; [] for tars


def write_manifest(dir_uri: str, entries: list[FileEntry]) -> str:
    """Write ``dir_uri/manifest.json`` (paths relative to ``dir_uri`` where they lie under it); return its URI."""
    base = dir_uri.rstrip("/") + "/"
    files = []
    for e in entries:
        d = asdict(e)
        if _norm(e.path).startswith(_norm(base)):
            d["path"] = _norm(e.path)[len(_norm(base)):]
        files.append(d)
    uri = storage.join(dir_uri, MANIFEST_NAME)
    storage.write_text(uri, json.dumps({"version": _VERSION, "files": files}, separators=(",", ":")))
    return uri


def read_manifest(dir_uri: str) -> list[FileEntry] | None:
    """The entries of ``dir_uri/manifest.json`` with absolute paths, or None if there is no manifest."""
    uri = storage.join(dir_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        return None
    doc = json.loads(storage.read_text(uri))
    if not isinstance(doc, dict) or doc.get("version") != _VERSION or "files" not in doc:
        raise ValueError(f"{uri}: not a version-{_VERSION} manifest (expected {{'version': 1, 'files': [...]}})")
    out = []
    for i, d in enumerate(doc["files"]):
        try:
            path = d["path"] if _is_absolute(d["path"]) else storage.join(dir_uri, d["path"])
            out.append(FileEntry(path=path, rows=int(d["rows"]), bytes=int(d["bytes"]),
                                 row_groups=[int(n) for n in d.get("row_groups", [])]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{uri}: files[{i}] is malformed ({e!r})") from None
    return out


def list_data_files(uri: str | list[str]) -> list[str]:
    """Sorted training files of a folder, a glob, a single file, or a list (or comma-separated string) of those.

    A folder is data prep's output (its ``data/*.parquet``), else its tars, else its Parquet files. img2dataset's
    per-shard ``NNNNN.parquet`` metadata and ``NNNNN_stats.json`` beside ``NNNNN.tar`` are never data files.
    """
    parts = uri if isinstance(uri, list) else [u for u in uri.split(",") if u.strip()]
    found: list[str] = []
    for u in (p.strip() for p in parts):
        if any(c in u for c in "*?["):
            found += storage.glob(u)
        elif u.endswith((".parquet", ".tar")):
            found.append(u)
        else:
            found += (storage.glob(storage.join(u, "data", "*.parquet"))
                      or [c for c in storage.listdir(u) if c.endswith((".tar", ".parquet"))])
    tar_stems = {f[:-len(".tar")] for f in found if f.endswith(".tar")}
    files = sorted({f for f in found if f.endswith(".tar") or (f.endswith(".parquet") and f[:-8] not in tar_stems)})
    if not files:
        raise FileNotFoundError(f"data {uri!r}: no data/*.parquet, *.parquet or *.tar files")
    return files


def build_manifest(uri: str | list[str], threads: int = 32, progress: bool = True) -> list[FileEntry]:
    """Entries for every data file under ``uri`` (see :func:`list_data_files`), read in parallel threads."""
    files = list_data_files(uri)
    out: list[FileEntry | None] = [None] * len(files)
    t0, done = time.time(), 0
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        for i, entry in pool.map(lambda a: (a[0], _entry(a[1])), enumerate(files)):
            out[i] = entry
            done += 1
            if progress and (done % 500 == 0 or done == len(files)):
                print(f"[manifest] {done}/{len(files)} files listed ({time.time() - t0:.1f}s)", file=sys.stderr,
                      flush=True)
    return out  # type: ignore[return-value]


def has_manifest(uri: str) -> bool:
    """Whether ``uri`` is a folder with a manifest.json (a glob, a file or a list never has one)."""
    single_folder = "," not in uri and not any(c in uri for c in "*?[") and not uri.endswith((".parquet", ".tar"))
    return single_folder and storage.exists(storage.join(uri, MANIFEST_NAME))


def load_index(uri: str) -> list[FileEntry]:
    """The manifest at ``uri`` if there is one, else one listing pass (with a hint on how to write a manifest)."""
    if has_manifest(uri):
        return read_manifest(uri)  # type: ignore[return-value]
    print(f"[manifest] no {MANIFEST_NAME} at {uri!r}: listing every file (slow at scale). Write one once with "
          f"`python -m pipeline.manifest {uri} --out <folder>` and set data.uri=<folder>.", file=sys.stderr,
          flush=True)
    return build_manifest(uri)


def _entry(path: str) -> FileEntry:
    if path.endswith(".parquet"):
        fs, p = storage.pyarrow_filesystem(path)
        size = fs.get_file_info(p).size
        md = pq.read_metadata(p, filesystem=fs)  # the footer only
        return FileEntry(path, md.num_rows, size, [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    fs, p = storage.filesystem(path)
    size = int(fs.info(p)["size"])
    rows = _rows_from_stats(path)
    return FileEntry(path, _count_tar_samples(path) if rows is None else rows, size, [])


def _rows_from_stats(tar_uri: str) -> int | None:
    """img2dataset's ``NNNNN_stats.json`` beside ``NNNNN.tar``: its ``successes`` are the samples in the tar."""
    stats = tar_uri[:-len(".tar")] + "_stats.json"
    if not storage.exists(stats):
        return None
    n = json.loads(storage.read_text(stats)).get("successes")
    return int(n) if n is not None else None


def _count_tar_samples(uri: str) -> int:
    """Samples (keys with an image) in a tar, streamed member by member without holding its contents."""
    keys = set()
    with storage.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for m in tar:
            base = m.name.rsplit("/", 1)[-1]
            if m.isfile() and "." in base and base.split(".", 1)[1].lower() in IMAGE_EXTS:
                keys.add(base.split(".", 1)[0])
    return len(keys)


def _norm(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.abspath(uri[7:] if uri.startswith("file://") else uri) + (
        "/" if uri.endswith("/") else "")


def _is_absolute(path: str) -> bool:
    return "://" in path or path.startswith("/")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description="Write a manifest.json for a folder, glob or list of Parquet/tar files")
    p.add_argument("uri", help="folder, glob, single file, or comma-separated list (local or s3://)")
    p.add_argument("--out", default=None, help="folder for manifest.json (default: the folder itself; required "
                                               "for a glob or list)")
    p.add_argument("--threads", type=int, default=32)
    a = p.parse_args(argv)
    out = a.out or a.uri
    if a.out is None and ("," in a.uri or any(c in a.uri for c in "*?[") or a.uri.endswith((".parquet", ".tar"))):
        p.error("--out is required for a glob, a file or a list")
    entries = build_manifest(a.uri, threads=a.threads)
    uri = write_manifest(out, entries)
    print(f"{uri}: {len(entries)} files, {sum(e.rows for e in entries)} rows, {sum(e.bytes for e in entries)} bytes")
    return uri


if __name__ == "__main__":
    main()
