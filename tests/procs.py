"""Subprocess helper for tests: a failing command fails the test with its own output, not a bare exit code."""

from __future__ import annotations

import subprocess


def run_ok(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, (f"{' '.join(map(str, cmd))} exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}"
                               f"\n--- stderr\n{r.stderr[-5000:]}")
    return r
