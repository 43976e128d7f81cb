"""Ray Train + DeepSpeed on CPU (2 gloo workers): ZeRO-2 runs checkpointing to S3, preemption, restart."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from demo.tiny_zoo import TINY_QFORMER

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The uninterrupted run that the preemption tests (worker and node) compare against: conftest's reference_run.
REFERENCE_RUN = {"train.max_steps": 16, "train.checkpoint_every": 4}


def tiny_args(zoo, data, storage_path, run, **over):
    args = {
        "model.vision.name_or_path": zoo["vision"], "model.vision.dtype": "fp32",
        "model.qformer.tokenizer": zoo["bert"], "model.qformer.bert_init": zoo["bert"],
        **{f"model.qformer.{k}": v for k, v in TINY_QFORMER.items()},
        "data.uri": data, "data.image_size": 32, "train.batch_size": 8, "train.num_workers": 2,
        "train.cpus_per_worker": 0.5, "train.zero_stage": 2, "train.log_every": 1, "optim.warmup_steps": 2,
        "optim.lr": 1e-3, "train.storage_path": storage_path, "train.run_name": run, "train.max_steps": 6,
        "train.checkpoint_every": 3,
        "train.ray_address": "local", **over}  # local: a Ray of the test's own, whatever else runs here
    return [f"{k}={v}" for k, v in args.items()]


def _metrics(run_dir):
    from pipeline.run_log import load_rows

    return load_rows(str(run_dir), 10**9)


def _run(args, script="jobs/stage1.py", **kw):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_zero2_stage1_and_stage2_checkpoint_to_s3(tiny_zoo, prepped, s3_bucket, monkeypatch):
    from pipeline import storage

    root, scfg = s3_bucket
    monkeypatch.setattr(storage, "_DEFAULT", scfg)  # the run log's reader takes the default storage settings
    env = {**os.environ, "AWS_ENDPOINT_URL": scfg.endpoint_url}
    r = _run(tiny_args(tiny_zoo, prepped, f"{root}/runs", "s1") + [f"storage.endpoint_url={scfg.endpoint_url}"],
             env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    latest = json.loads(storage.read_text(f"{root}/runs/s1/latest.json", scfg))
    assert latest["step"] == 6
    files = {u.rsplit("/", 1)[-1] for u in storage.listdir(latest["uri"], scfg)}
    assert {"COMPLETE", "model.safetensors", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_rank00000.pt", "rng_rank00001.pt"} <= files
    assert len(storage.listdir(f"{root}/runs/s1/checkpoints", scfg)) == 2  # num_to_keep
    assert storage.exists(f"{root}/runs/s1/loss_curve.png", scfg) and storage.exists(f"{root}/runs/s1/config.yaml", scfg)
    # frozen weights are never saved: the checkpoint holds only trainable parameters
    from safetensors.torch import load as load_st

    state = load_st(storage.read_bytes(f"{latest['uri']}/model.safetensors", scfg))
    assert not any(k.startswith("vision.tower") for k in state)

    for llm in ("opt", "t5"):
        args = [a for a in tiny_args(tiny_zoo, prepped, f"{root}/runs", f"s2{llm}")
                if not a.startswith(("model.qformer.tokenizer", "model.qformer.bert_init"))]
        # T5 runs DeepSpeed's bf16 mode (every weight cast to bf16, as on a GPU); OPT runs fp32.
        dtype = {"opt": "fp32", "t5": "bf16"}[llm]
        args += [f"model.llm.name_or_path={tiny_zoo[llm]}", f"model.llm.dtype={dtype}", f"train.precision={dtype}",
                 f"init_from={latest['uri']}", "model.max_txt_len=16", f"storage.endpoint_url={scfg.endpoint_url}"]
        r = _run(args, script="jobs/stage2.py", env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        rows = _metrics(f"{root}/runs/s2{llm}")
        assert [x["step"] for x in rows] == list(range(1, 7)) and all(x["lm_loss"] > 0 for x in rows)


def _wait_for_step(run_dir, step, proc, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = os.path.join(run_dir, "latest.json")
        if os.path.exists(p) and json.load(open(p))["step"] >= step:
            return
        assert proc.poll() is None, "run ended before the kill point"
        time.sleep(0.2)
    raise TimeoutError("no checkpoint in time")


def _kill_tree(proc):
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def test_preempted_worker_resumes_exactly(tiny_zoo, prepped, reference_run, tmp_path):
    over = {**REFERENCE_RUN, "train.max_failures": 2}
    proc = subprocess.Popen([sys.executable, "jobs/stage1.py", *tiny_args(tiny_zoo, prepped, str(tmp_path), "kill",
                                                                          **over)],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_step(tmp_path / "kill", 4, proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RayTrainWorker" in " ".join(p.cmdline())]
        assert workers, "no Ray Train worker process found"
        t_kill = time.time()
        workers[-1].send_signal(signal.SIGKILL)  # a preempted worker
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from" in out
    ref, got = _metrics(reference_run), _metrics(tmp_path / "kill")
    assert [x["step"] for x in got] == list(range(1, 17))
    for a, b in zip(ref, got):
        for k in ("itc_loss", "itm_loss", "itg_loss", "loss"):
            assert abs(a[k] - b[k]) <= 1e-6, (a["step"], k, a[k], b[k])
        assert a["keys"] == b["keys"]
    # TensorBoard holds each step once across the restart (the resumed writer purges the steps it redoes)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "kill" / "tensorboard"))
    ea.Reload()
    tb = ea.Scalars("train/loss")
    assert [e.step for e in tb] == list(range(1, 17))
    assert all(abs(e.value - b["loss"]) <= 1e-5 for e, b in zip(tb, got))
    print(f"preemption: recovered and finished {time.time() - t_kill:.1f}s after the kill")


def test_killed_driver_rerun_resumes(tiny_zoo, prepped, tmp_path):
    args = tiny_args(tiny_zoo, prepped, str(tmp_path), "restart", **{"train.max_steps": 12,
                                                                     "train.checkpoint_every": 4})
    proc = subprocess.Popen([sys.executable, "jobs/stage1.py", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_step(tmp_path / "restart", 4, proc)
    finally:
        _kill_tree(proc)
    step_at_kill = json.load(open(tmp_path / "restart" / "latest.json"))["step"]
    r = _run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {step_at_kill}" in r.stdout + r.stderr
    rows = _metrics(tmp_path / "restart")
    assert [x["step"] for x in rows] == list(range(1, 13))
