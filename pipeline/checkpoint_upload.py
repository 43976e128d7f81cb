"""Checkpoint uploads off the step loop: one background upload at a time per rank, committed when every rank's is in.

The step loop writes a checkpoint to a local staging folder (the only part that blocks it) and hands the folder
to :class:`CheckpointUploader`. Its thread uploads the folder, then writes ``UPLOADED_rankNNNNN`` into the
checkpoint. Rank 0's thread, once all ranks' markers are there, writes ``COMPLETE`` and then ``latest.json``, and
prunes old checkpoints, so ``latest.json`` only ever names a complete checkpoint. A new checkpoint waits for the
previous upload (never two at once); a failed upload (after storage's own retries) raises in the step loop at its
next :meth:`check`, naming the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable

from pipeline import checkpoint as ckpt
from pipeline import storage

MARKER_PREFIX = "UPLOADED_rank"
ALL_RANKS_TIMEOUT_S = 3600.0  # rank 0 gives up waiting for the other ranks' uploads after this long


class CheckpointUploadError(RuntimeError):
    """A checkpoint could not be written to storage; its message names the checkpoint URI."""


def rank_marker(uri: str, rank: int) -> str:
    return storage.join(uri, f"{MARKER_PREFIX}{rank:05d}")


def commit(run_uri: str, uri: str, tag: str, step: int, num_to_keep: int) -> None:
    """Rank 0, after every rank's files are in: ``COMPLETE``, then ``latest.json``, then prune old checkpoints."""
    ckpt.mark_complete(uri)
    storage.write_text(storage.join(run_uri, "latest.json"), json.dumps({"tag": tag, "step": step, "uri": uri}))
    tags = sorted(u.rsplit("/", 1)[-1] for u in storage.listdir(storage.join(run_uri, "checkpoints")))
    older = [x for x in tags if x <= tag]
    for old in older[:-num_to_keep] if num_to_keep > 0 else []:
        storage.remove(storage.join(run_uri, "checkpoints", old))


class CheckpointUploader:
    def __init__(self, rank: int, world: int, poll_s: float = 0.5):
        self.rank, self.world, self.poll_s = rank, world, poll_s
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._uri = ""
        self.last_upload_s = 0.0  # seconds the last upload (and, on rank 0, its commit) took in the background

    def start(self, local_dir: str, uri: str, on_all_uploaded: Callable[[], None] | None = None) -> None:
        """Upload ``local_dir`` to ``uri`` in the background, then delete it; rank 0 then waits for every rank
        and calls ``on_all_uploaded`` (the commit)."""
        self.wait()
        self._uri, self._error = uri, None
        self._thread = threading.Thread(target=self._run, args=(local_dir, uri, on_all_uploaded),
                                        name="checkpoint-upload", daemon=True)
        self._thread.start()

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Raise in the caller's thread if the last upload failed (the step loop calls this every step)."""
        if self._error is not None and not self.busy():
            err, self._error = self._error, None
            raise CheckpointUploadError(f"checkpoint {self._uri} could not be written: {err}") from err

    def wait(self) -> None:
        """Block until the current upload (if any) is done; raise if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check()

    def _run(self, local_dir: str, uri: str, on_all_uploaded) -> None:
        t0 = time.time()
        try:
            storage.upload_dir(local_dir, uri)
            storage.write_text(rank_marker(uri, self.rank), "")
            if self.rank == 0:
                self._wait_for_ranks(uri)
                if on_all_uploaded:
                    on_all_uploaded()
        except BaseException as e:  # noqa: BLE001 - handed to the step loop, which raises it
            self._error = e
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
            self.last_upload_s = time.time() - t0

    def _wait_for_ranks(self, uri: str) -> None:
        deadline = time.time() + ALL_RANKS_TIMEOUT_S
        pending = set(range(self.world))
        while pending:
            pending = {r for r in pending if not storage.exists(rank_marker(uri, r))}
            if not pending:
                return
            if time.time() > deadline:
                raise TimeoutError(f"ranks {sorted(pending)} did not finish uploading {uri} "
                                   f"within {ALL_RANKS_TIMEOUT_S:.0f} s")
            time.sleep(self.poll_s)
