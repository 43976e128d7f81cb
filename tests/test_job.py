"""A real `ray start --head` cluster and `ray job submit --working-dir` of jobs/stage1.py, next to an unrelated
Ray head that must survive the test (a user's own cluster on the same machine)."""

import os
import secrets
import subprocess
import sys

import psutil
import pytest

from tests.procs import child_env, cluster_processes, ray_head
from tests.test_train import tiny_args

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ray_job_submit_stage1_leaves_other_clusters_alone(tiny_zoo, prepped, tmp_path):  # noqa: F811
    bindir = os.path.dirname(sys.executable)
    # the job driver runs `python` from the head node's PATH: make that this venv, as a cluster node's image would.
    # Token auth as `ray job submit` needs it; the token lives in this test's environment only.
    env = child_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                    PATH=bindir + os.pathsep + os.environ["PATH"])
    with ray_head(bindir, env, "--num-cpus=1", "--include-dashboard=false") as (other, _, other_tmp):
        other_port = int(other.rsplit(":", 1)[1])
        bystanders = cluster_processes(other_tmp, other_port)
        assert bystanders
        with ray_head(bindir, env, "--num-cpus=2", "--include-dashboard=true") as (_, dash, _):
            # train.ray_address=null: the driver joins the cluster the job runs on (RAY_ADDRESS), as users run it
            args = tiny_args(tiny_zoo, prepped, str(tmp_path), "job",
                             **{"train.max_steps": 3, "train.ray_address": "null"})
            r = subprocess.run([os.path.join(bindir, "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
                                "--working-dir", ROOT, "--", "python", "jobs/stage1.py", *args], env=env,
                               capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
            assert "succeeded" in (r.stdout + r.stderr).lower()
            assert os.path.exists(tmp_path / "job" / "latest.json")
        # our head is gone, the unrelated one is untouched
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in bystanders)
