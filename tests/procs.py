"""Subprocess helpers for tests: a failing command fails the test with its own output, not a bare exit code;
Ray heads that a test starts are stopped by their own processes, never by `ray stop` (which stops every Ray
cluster on the machine, a user's own included)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time

import psutil


def run_ok(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, (f"{' '.join(map(str, cmd))} exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}"
                               f"\n--- stderr\n{r.stderr[-5000:]}")
    return r


def child_env(*drop: str, **add: str) -> dict:
    """This process's environment for a child, without ``RAY_ADDRESS`` (a cluster an earlier test left named
    there, which `ray job submit` and `ray.init()` would join) or the names in ``drop``, plus ``add``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *drop)}
    return {**env, **add}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    """Every process of the cluster whose head used ``temp_dir`` and ``gcs_port``: the daemons name one of the
    two on their command line, and the workers and agents are their descendants."""
    marks = (temp_dir, f":{gcs_port} ", f":{gcs_port}\0", f"port={gcs_port}")
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = "\0".join(p.info["cmdline"] or []) + "\0"
        if any(m in cmd for m in marks) or f"--gcs-address=127.0.0.1:{gcs_port}" in cmd:
            found[p.pid] = p
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in p.children(recursive=True)})
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_cluster(temp_dir: str, gcs_port: int, timeout: float = 20) -> None:
    procs = cluster_processes(temp_dir, gcs_port)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


@contextlib.contextmanager
def ray_head(bin_dir: str, env: dict, *args: str, port: int | None = None):
    """``ray start --head`` on free ports (the GCS on ``port`` where given) with a temp dir of its own; yields
    (gcs address, dashboard port, temp dir); stops exactly that cluster afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rayt")
    port, dash, client = port or free_port(), free_port(), free_port()
    run_ok([os.path.join(bin_dir, "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats", *args], env=env)
    try:
        yield f"127.0.0.1:{port}", dash, temp_dir
    finally:
        stop_cluster(temp_dir, port)
        time.sleep(0.5)
