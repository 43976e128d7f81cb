"""Rank 0's record of a run: ``metrics.jsonl``, TensorBoard events and ``loss_curve.png`` in the run dir.

The rows are kept in memory and written whole at each checkpoint, so after a resume the file holds exactly
the steps up to the checkpoint plus those trained since. TensorBoard writes to a local folder that is copied
to ``<run>/tensorboard/`` (TensorBoard reads it from local paths or s3://) at the same points.
"""

from __future__ import annotations

import json
import tempfile

from pipeline import storage

LOSS_KEYS = ("loss", "itc_loss", "itm_loss", "itg_loss", "lm_loss")


def load_rows(run_uri: str, upto_step: int) -> list[dict]:
    path = storage.join(run_uri, "metrics.jsonl")
    if not storage.exists(path):
        return []
    rows = [json.loads(line) for line in storage.read_text(path).splitlines() if line]
    return [r for r in rows if r["step"] <= upto_step]


class RunLog:
    def __init__(self, run_uri: str, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run_uri = run_uri
        self.rows = load_rows(run_uri, resume_step)
        self._tb_written = len(self.rows)  # rows before the resume point are already in earlier event files
        self._tb_dir = tempfile.mkdtemp(prefix="tb-")
        self._tb = SummaryWriter(self._tb_dir, purge_step=resume_step + 1 if resume_step else None)

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def flush(self, plot: bool = False) -> None:
        storage.write_text(storage.join(self.run_uri, "metrics.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in self.rows))
        for row in self.rows[self._tb_written:]:  # here rather than per step: keeps the step loop lean
            for k, v in row.items():
                if k not in ("step", "epoch", "keys") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])
        self._tb_written = len(self.rows)
        self._tb.flush()
        storage.upload_dir(self._tb_dir, storage.join(self.run_uri, "tensorboard"))
        if plot and self.rows:
            storage.write_bytes(storage.join(self.run_uri, "loss_curve.png"), loss_curve_png(self.rows))

    def close(self) -> None:
        import shutil

        self._tb.close()
        shutil.rmtree(self._tb_dir, ignore_errors=True)


def loss_curve_png(rows: list[dict]) -> bytes:
    import io

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
