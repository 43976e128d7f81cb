"""Rank 0's record of a run: per-step metrics (with the global batch's sample keys), TensorBoard events and
``loss_curve.png`` in the run dir.

Metrics are append-only segments ``<run>/metrics/<seq>_<first step>_<last step>.parquet``: each checkpoint writes
one segment with only the rows since the previous one (zstd Parquet; the keys are a list<string> column), so the
bytes a checkpoint writes grow with the interval, not with the run, and rank 0 holds only those rows. Segments
are read in write order (``seq``); a segment that starts at step ``s`` hides every earlier row at step ``>= s``.
A resumed run therefore writes on from its checkpoint step and the rows a lost attempt wrote past that step drop
out of the stream without any file being rewritten. ``load_rows`` gives that one ordered stream;
``python -m pipeline.run_log <run>`` prints it as JSON lines.

TensorBoard writes to a local folder that is copied to ``<run>/tensorboard/`` (TensorBoard reads it from local
paths or s3://) at the same points.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage

LOSS_KEYS = ("loss", "itc_loss", "itm_loss", "itg_loss", "lm_loss")
_SEGMENT = re.compile(r"(\d{6})_(\d{10})_(\d{10})\.parquet$")


def _segments(run_uri: str) -> list[tuple[int, int, int, str]]:
    """(seq, first step, last step, uri) of every segment, in write order."""
    out = []
    for uri in storage.listdir(storage.join(run_uri, "metrics")):
        m = _SEGMENT.search(uri)
        if m:
            out.append((int(m[1]), int(m[2]), int(m[3]), uri))
    return sorted(out)


def _visible(segments: list[tuple[int, int, int, str]], upto_step: int) -> list[tuple[str, int]]:
    """(segment uri, last visible step) of the segments that hold the stream up to ``upto_step``, in step order."""
    live: list[list] = []  # [first, cap, uri]
    for _, first, last, uri in segments:
        for seg in live:
            seg[1] = min(seg[1], first - 1)  # a later segment starting at `first` hides rows >= first
        live = [s for s in live if s[1] >= s[0]] + [[first, min(last, upto_step), uri]]
    return [(uri, cap) for first, cap, uri in sorted(live) if cap >= first]


def load_rows(run_uri: str, upto_step: int, keys: bool = True) -> list[dict]:
    """The run's metric rows with ``step <= upto_step``, in step order; ``keys=False`` skips reading the keys."""
    rows: list[dict] = []
    for uri, cap in _visible(_segments(run_uri), upto_step):
        with storage.open_file(uri, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = None if keys else [c for c in pf.schema_arrow.names if c != "keys"]
            rows += [r for r in pf.read(columns=cols).to_pylist() if r["step"] <= cap]
    return rows


class RunLog:
    def __init__(self, run_uri: str, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run_uri = run_uri
        self.pending: list[dict] = []  # rows since the last flush; the only rows held in memory
        self.last_step = resume_step
        self._seq = max((s[0] for s in _segments(run_uri)), default=-1) + 1
        self._tb_dir = tempfile.mkdtemp(prefix="tb-")
        self._tb = SummaryWriter(self._tb_dir, purge_step=resume_step + 1 if resume_step else None)

    def append(self, row: dict) -> None:
        self.pending.append(row)

    def flush(self, plot: bool = False) -> None:
        """Write the rows since the last flush as one segment (and TensorBoard events, and optionally the plot)."""
        if self.pending:
            first, last = self.pending[0]["step"], self.pending[-1]["step"]
            storage.write_bytes(storage.join(self.run_uri, "metrics", f"{self._seq:06d}_{first:010d}_{last:010d}.parquet"),
                                segment_bytes(self.pending))
            self._seq += 1
            for row in self.pending:  # here rather than per step: keeps the step loop lean
                for k, v in row.items():
                    if k not in ("step", "epoch", "keys") and isinstance(v, (int, float)):
                        self._tb.add_scalar(f"train/{k}", v, row["step"])
            self.last_step = last
            self.pending = []
        self._tb.flush()
        storage.upload_dir(self._tb_dir, storage.join(self.run_uri, "tensorboard"))
        if plot:
            rows = load_rows(self.run_uri, self.last_step, keys=False)
            if rows:
                storage.write_bytes(storage.join(self.run_uri, "loss_curve.png"), loss_curve_png(rows))

    def close(self) -> None:
        import shutil

        self._tb.close()
        shutil.rmtree(self._tb_dir, ignore_errors=True)


def segment_bytes(rows: list[dict]) -> bytes:
    """One segment: the rows as a zstd Parquet table (sample keys as a list<string> column)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    return buf.getvalue()


def loss_curve_png(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k in LOSS_KEYS:
        if k in rows[0]:
            ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print a run's metric rows as JSON lines, in step order")
    p.add_argument("run", help="run dir (<train.storage_path>/<train.run_name>), local or s3://")
    p.add_argument("--upto", type=int, default=2**62, help="last step to print")
    p.add_argument("--keys", action="store_true", help="include each step's sample keys")
    a = p.parse_args(argv)
    for row in load_rows(a.run, a.upto, keys=a.keys):
        sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
