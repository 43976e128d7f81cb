"""A real `ray start --head` cluster and `ray job submit --working-dir` of jobs/stage1.py."""

import os
import subprocess
import sys

import pytest

from tests.conftest import _free_port
from tests.procs import run_ok
from tests.test_train import tiny_args

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ray_job_submit_stage1(tiny_zoo, prepped, tmp_path):  # noqa: F811
    bindir = os.path.dirname(sys.executable)
    ray = os.path.join(bindir, "ray")
    port, dash = _free_port(), _free_port()
    # the job driver runs `python` from the head node's PATH: make that this venv, as a cluster node's image would
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": bindir + os.pathsep + os.environ["PATH"]}
    run_ok([ray, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
            "--include-dashboard=true", "--disable-usage-stats"], env=env)
    try:
        args = tiny_args(tiny_zoo, prepped, str(tmp_path), "job", **{"train.max_steps": 3})
        r = subprocess.run([ray, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", ROOT,
                            "--", "python", "jobs/stage1.py", *args], env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert "succeeded" in (r.stdout + r.stderr).lower()
        assert os.path.exists(tmp_path / "job" / "latest.json")
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
