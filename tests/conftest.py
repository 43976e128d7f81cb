"""Shared fixtures: a real moto S3 server on a free loopback port, and a bucket per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.procs import free_port

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# The same `ninja` for every process a test starts (see the Makefile): two versions rebuild DeepSpeed's CPU op
# in turn, each treating the other's build log as stale.
if os.path.dirname(sys.executable) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def moto_server():
    """A moto S3 server in its own process: a real HTTP endpoint that Ray workers can reach too."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh bucket; yields (s3://bucket, StorageConfig pointing at the moto endpoint)."""
    import boto3

    from pipeline.storage import StorageConfig

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=name)
    yield f"s3://{name}", StorageConfig(endpoint_url=moto_server, region="us-east-1")


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Tiny BERT/vision/OPT/T5 models + tokenizers, saved and reloaded through from_pretrained."""
    from demo.tiny_zoo import build_tiny_zoo

    return build_tiny_zoo(str(tmp_path_factory.mktemp("zoo")))


@pytest.fixture(scope="session")
def synthetic_batch():
    """32 distinct synthetic 32-px image/caption pairs as (pixel_values [32, 3, 32, 32], captions)."""
    from demo.synthetic import SyntheticConfig, make_sample
    from pipeline.images import to_pixel_values

    cfg = SyntheticConfig(image_size=32)
    samples = [make_sample(cfg, "train", i) for i in range(32)]
    return to_pixel_values([s["jpg"] for s in samples], 32), [s["txt"] for s in samples]


@pytest.fixture(scope="session")
def prepped(tmp_path_factory, tiny_zoo):
    """Synthetic data through jobs/dataprep.py (no models), as training reads it; shared by the training tests."""
    from demo.synthetic import SyntheticConfig, generate
    from tests.procs import run_ok

    d = tmp_path_factory.mktemp("train_data")
    generate(SyntheticConfig(num_samples=400, samples_per_shard=100, image_size=32, noise_fraction=0.3), str(d / "raw"))
    run_ok([sys.executable, "jobs/dataprep.py", f"input={d / 'raw'}", f"output={d / 'prepped'}",
            "validate.min_size=16", "validate.resize_shorter_side=32"], cwd=os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))))
    return str(d / "prepped")


@pytest.fixture(scope="session")
def reference_run(tiny_zoo, prepped, tmp_path_factory):
    """Run dir of an uninterrupted 16-step stage-1 run (2 workers, one local Ray), shared by the worker- and
    node-preemption tests. Defined here so that it runs once per session (a fixture imported into two test
    modules would run once per module)."""
    from tests.test_train import REFERENCE_RUN, _run, tiny_args

    d = str(tmp_path_factory.mktemp("reference"))
    r = _run(tiny_args(tiny_zoo, prepped, d, "ref", **REFERENCE_RUN))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return f"{d}/ref"
