"""bench/capfilt_gpu.py runs end to end (tiny models, on CPU here), so that it works the day a GPU is lent."""

import json
import os
import sys

import torch

from tests.procs import child_env, run_ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_capfilt_gpu_bench_reports_every_run(tmp_path):
    out = tmp_path / "runs.jsonl"
    cmd = [sys.executable, os.path.join(ROOT, "bench", "capfilt_gpu.py"), "--size", "tiny", "--images", "12",
           "--shard", "8", "--max-length", "4", "--runs", "captioner:4:2", "filter:5:3", "--json", str(out)]
    run_ok(cmd, env=child_env(), cwd=ROOT)
    cap, fil = [json.loads(line) for line in open(out)]
    assert (cap["stage"], cap["batch"], cap["prepare_threads"], cap["images"]) == ("captioner", 4, 2, 12)
    assert (fil["stage"], fil["batch"], fil["prepare_threads"], fil["images"]) == ("filter", 5, 3, 24)
    for r in (cap, fil):
        assert r["images_per_s"] > 0 and 0 < r["model_share"] <= 1 and r["prepare_thread_ms_per_image"] > 0
        if not torch.cuda.is_available():  # no GPU: busy is reported as unknown, not made up
            assert r["gpu_busy"] is None and r["device"] == "cpu"
    r = run_ok(cmd[:-2] + ["--prepare-only"], env=child_env(), cwd=ROOT)
    rates = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [x["stage"] for x in rates] == ["captioner", "filter"] and all(x["prepare_images_per_s"] > 0 for x in rates)
