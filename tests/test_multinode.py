"""Real multi-node Ray on one machine: autoscaling with the fake multi-node provider, and a spot-style node loss
(every process of one worker node killed) that a stage-1 run survives."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pipeline.run_log import load_rows
from tests.procs import child_env, free_port, ray_head, run_ok
from tests.test_train import REFERENCE_RUN, tiny_args

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV = child_env(PATH=BIN + os.pathsep + os.environ["PATH"], RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN=secrets.token_hex(16))  # this test's clusters' token, in its environment only
# one training worker per node: 1.5 of a node's 2 CPUs, the rest for its Ray Data decode tasks
PER_NODE = {"train.cpus_per_worker": 1.5, "data.decode_num_cpus": 0.25}


def _alive_nodes(address: str, env: dict) -> int:
    """Counted by a short-lived driver of its own: Ray caches a process's auth token on first use, so this
    (pytest) process, which has run token-less local clusters, cannot join a token cluster itself."""
    code = "import ray, sys; ray.init(sys.argv[1], log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    return int(run_ok([sys.executable, "-c", code, address], env=env).stdout.split()[-1])


def test_autoscaler_adds_worker_nodes_for_a_job(tiny_zoo, prepped, tmp_path):  # noqa: F811
    """Ray's fake multi-node provider (real raylets on this machine) driven by the real autoscaler: the job's
    2 worker nodes are added, and removed after the idle timeout once it ends. (Removal needs Ray Data's
    detached actors kept off the worker nodes: pipeline.train._pin_ray_data_actors_here.)"""
    port = free_port()  # the provider's nodes join the head here (its default is 6379)
    config = {  # a cluster-launcher config for the `fake_multinode` provider
        "cluster_name": "fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.2,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"}, "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            "cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2}},
        "head_node_type": "ray.head.default", "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": []}
    cfg_path = tmp_path / "fake.yaml"
    cfg_path.write_text(json.dumps(config))
    env = {**ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with ray_head(BIN, env, f"--autoscaling-config={cfg_path}", "--num-cpus=0", "--include-dashboard=false",
                  port=port) as (address, _, _):
        assert _alive_nodes(address, env) == 1
        t0 = time.time()
        # a separate driver, like a submitted job: when it exits its actors go, and the nodes become idle
        r = subprocess.run([sys.executable, "jobs/stage1.py", *tiny_args(
            tiny_zoo, prepped, str(tmp_path), "autoscale", **{"train.max_steps": 3, "train.ray_address": address,
                                                              **PER_NODE})], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        t_done = time.time()
        peak = _alive_nodes(address, env)
        assert peak == 3, f"expected head + 2 added worker nodes, saw {peak}"
        while time.time() - t_done < 120 and _alive_nodes(address, env) > 1:
            time.sleep(1)
        left = _alive_nodes(address, env) - 1
        print(f"autoscaler: the job got 2 added nodes in {t_done - t0:.0f}s; {left} worker node(s) left "
              f"{time.time() - t_done:.0f}s after it ended (idle timeout 12s)")
        assert left == 0, "idle worker nodes were not removed"


def _start_node(address, tag):
    run_ok([os.path.join(BIN, "ray"), "start", f"--address={address}", "--num-cpus=2",
            f"--resources={json.dumps({tag: 1})}", "--disable-usage-stats"], env=ENV)


def _node_processes(tag):
    """The raylet started with this node's resource tag and everything under it."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd and tag in cmd:
            procs.append(p)
            procs += p.children(recursive=True)
    return procs


def test_node_preemption_resumes_from_latest_checkpoint(tiny_zoo, prepped, reference_run, tmp_path):
    with ray_head(BIN, ENV, "--num-cpus=0", "--include-dashboard=false") as (address, _, _):
        _preempt_a_node(address, tiny_zoo, prepped, reference_run, tmp_path)


def _preempt_a_node(address, tiny_zoo, prepped, reference_run, tmp_path):
    _start_node(address, "node_a")
    _start_node(address, "node_b")
    # Same run as the reference (one node), spread over two nodes: the losses must match it all the same.
    over = {**REFERENCE_RUN, "train.max_failures": 3, "train.ray_address": address, **PER_NODE}
    cmd = [sys.executable, "jobs/stage1.py"]
    proc = subprocess.Popen(cmd + tiny_args(tiny_zoo, prepped, str(tmp_path), "spot", **over), cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    latest = tmp_path / "spot" / "latest.json"
    while not (latest.exists() and json.load(open(latest))["step"] >= 4):
        assert proc.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.2)
    victims = _node_processes("node_b")
    assert victims
    ckpt_step = json.load(open(latest))["step"]
    t_kill = time.time()
    for p in victims:  # a spot reclaim: the whole node disappears at once
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    done_before_kill = max([int(x.split("[train] step ")[1].split("/")[0]) for x in lines if "[train] step " in x]
                           or [ckpt_step])
    _start_node(address, "node_c")  # the replacement node
    proc.wait(timeout=900)
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    resumed = [line for line in out.splitlines() if "resumed from" in line]
    assert resumed, out[-3000:]
    resumed_at = int(resumed[0].rsplit("at step", 1)[1])
    steps_lost = done_before_kill - resumed_at
    print(f"node preemption: {steps_lost} steps lost (done {done_before_kill}, resumed at {resumed_at}), "
          f"recovered and finished {time.time() - t_kill:.1f}s after the kill")
    assert resumed_at >= ckpt_step and steps_lost <= 4
    ref, got = load_rows(reference_run, 10**9), load_rows(str(tmp_path / "spot"), 10**9)
    assert [x["step"] for x in got] == list(range(1, 17))
    for a, b in zip(ref, got):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and a["keys"] == b["keys"], a["step"]
