"""The pixels of an evaluation set, looked up by the image names its annotations use.

A source is a folder (names are paths under it: ``val2014/COCO_val2014_000000391895.jpg``), Parquet (a file, or a
folder of them: a name column ``name``/``file_name``/``image_name``/``key``/``path`` and an encoded-image column
``jpg``/``image``/``bytes``/``image_bytes``, or Hugging Face's ``{bytes, path}`` image struct), or WebDataset tars
(``KEY.jpg``). In Parquet and tars a name also matches by its file name or its stem, so an annotation's
``val2014/COCO_val2014_000000391895.jpg`` finds the member ``COCO_val2014_000000391895.jpg``.
"""

from __future__ import annotations

import io
import posixpath

from pipeline import storage

_NAME_COLUMNS = ("name", "file_name", "image_name", "key", "path")
_BYTES_COLUMNS = ("jpg", "image", "bytes", "image_bytes")


def _aliases(name: str) -> list[str]:
    base = posixpath.basename(name)
    return [name, base, base.rsplit(".", 1)[0]]


class ImageSource:
    """Picklable: built on the driver, used inside the Ray Data actors (each process indexes packed files once)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self._index: dict[str, bytes] | None = None
        if uri.endswith(".parquet") or uri.endswith(".tar"):
            self.files = [uri]
        elif any(c in uri for c in "*?["):
            self.files = storage.glob(uri)
        else:
            self.files = (storage.glob(storage.join(uri, "data", "*.parquet")) or storage.glob(storage.join(uri, "*.parquet"))
                          or storage.glob(storage.join(uri, "*.tar")))
        self.kind = "packed" if self.files else "folder"

    def __getstate__(self):
        return {**self.__dict__, "_index": None}  # never ship the decoded index between processes

    def _build_index(self) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        from pipeline.records import read_tar

        index: dict[str, bytes] = {}
        for f in self.files:
            if f.endswith(".tar"):
                pairs = [(r["key"], r["image"]) for r in read_tar(f) if r["image"] is not None]
            else:
                pairs = _parquet_pairs(pq.read_table(io.BytesIO(storage.read_bytes(f))), f)
            for name, data in pairs:
                for alias in _aliases(name):
                    index.setdefault(alias, data)
        return index

    def load(self, names: list[str]) -> list[bytes]:
        if self.kind == "folder":
            out = []
            for n in names:
                try:
                    out.append(storage.read_bytes(storage.join(self.uri, n)))
                except FileNotFoundError:
                    raise FileNotFoundError(f"image {n!r} not found under {self.uri!r} (set images= to the folder "
                                            "the annotation's image paths are relative to)") from None
            return out
        if self._index is None:
            self._index = self._build_index()
        out = []
        for n in names:
            hit = next((self._index[a] for a in _aliases(n) if a in self._index), None)
            if hit is None:
                raise KeyError(f"image {n!r} is in none of {len(self.files)} packed files under {self.uri!r}")
            out.append(hit)
        return out


def _parquet_pairs(table, uri: str) -> list[tuple[str, bytes]]:
    cols = table.column_names
    data_col = next((c for c in _BYTES_COLUMNS if c in cols), None)
    if data_col is None:
        raise ValueError(f"{uri}: no image column (one of {_BYTES_COLUMNS}); columns are {cols}")
    data = table.column(data_col).to_pylist()
    name_col = next((c for c in _NAME_COLUMNS if c in cols), None)
    if data and isinstance(data[0], dict):  # Hugging Face datasets' Image feature: {bytes, path}
        names = table.column(name_col).to_pylist() if name_col else [d.get("path") for d in data]
        data = [d["bytes"] for d in data]
    elif name_col:
        names = table.column(name_col).to_pylist()
    else:
        raise ValueError(f"{uri}: no image-name column (one of {_NAME_COLUMNS}); columns are {cols}")
    return [(str(n), d) for n, d in zip(names, data) if n is not None and d is not None]
