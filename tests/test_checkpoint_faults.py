"""Storage faults during checkpoint uploads (2 CPU workers, moto S3 behind a TCP proxy that the test cuts).

One run meets two outages: a short one in the middle of the step-8 upload, which the retries ride out, and one
in the middle of the step-12 upload that outlasts them, which fails the run naming the checkpoint. Throughout,
latest.json (read straight from moto, not through the proxy) only names complete checkpoints. With storage back,
a rerun resumes from step 8 and ends with the uninterrupted reference run's losses.
"""

import json
import os
import subprocess
import sys
import threading

import boto3
import pytest

from tests.s3_proxy import CuttableProxy
from tests.test_train import REFERENCE_RUN, ROOT, _metrics, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


class LatestWatcher(threading.Thread):
    """Polls latest.json on the server itself; records each step it names and whether that checkpoint was complete."""

    def __init__(self, endpoint: str, bucket: str, prefix: str):
        super().__init__(daemon=True)
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.bucket, self.prefix = bucket, prefix
        self.seen: dict[int, bool] = {}
        self.stop = threading.Event()

    def check(self) -> None:
        try:
            latest = json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/latest.json")["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return
        key = latest["uri"].split("/", 3)[3]
        names = {o["Key"].rsplit("/", 1)[-1] for o in
                 self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key + "/").get("Contents", [])}
        complete = {"COMPLETE", "model.safetensors", "UPLOADED_rank00000", "UPLOADED_rank00001"} <= names
        self.seen[latest["step"]] = self.seen.get(latest["step"], True) and complete

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.check()


def test_checkpoint_upload_survives_outage_then_fails_loudly_then_resumes(tiny_zoo, prepped, moto_server,
                                                                          s3_bucket, reference_run, monkeypatch):
    from pipeline import storage

    root, scfg = s3_bucket
    monkeypatch.setattr(storage, "_DEFAULT", scfg)  # load_rows reads the run log from moto itself
    bucket = root[len("s3://"):]
    proxy = CuttableProxy(moto_server).start()
    watcher = LatestWatcher(moto_server, bucket, "runs/faults")
    watcher.start()
    args = tiny_args(tiny_zoo, prepped, f"{root}/runs", "faults", **REFERENCE_RUN, **{
        "train.max_failures": 0, "storage.endpoint_url": proxy.endpoint, "storage.retry_attempts": 4,
        "storage.retry_backoff_s": 0.5})
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint}
    try:
        # outage 1: the second request of the step-8 upload finds the server gone; back 2 s later
        proxy.cut_on("/checkpoints/step_00000008/", occurrence=2, restore_after=2.0)
        proc = subprocess.Popen([sys.executable, "jobs/stage1.py", *args], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proxy.was_cut.wait(600), "the step-8 upload never started"
        # outage 2: the same in the step-12 upload, but the server stays away (4 tries take ~3.5 s)
        proxy.was_cut.clear()
        proxy.cut_on("/checkpoints/step_00000012/", occurrence=2)
        out, _ = proc.communicate(timeout=900)
        assert proxy.was_cut.is_set(), out[-3000:]
        assert proc.returncode != 0, out[-3000:]
        # the retries, then the loud failure naming the checkpoint
        assert "/checkpoints/step_00000008/" in out and "retrying in" in out, out[-3000:]
        assert f"checkpoint {root}/runs/faults/checkpoints/step_00000012 could not be written" in out, out[-3000:]
        assert "failed after 4 attempt(s)" in out
        watcher.check()
        assert json.loads(boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").get_object(
            Bucket=bucket, Key="runs/faults/latest.json")["Body"].read())["step"] == 8

        # storage is back: the same command resumes from the last complete checkpoint and finishes
        proxy.restore()
        r = subprocess.run([sys.executable, "jobs/stage1.py", *args], cwd=ROOT, env=env, text=True,
                           capture_output=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "at step 8" in r.stdout + r.stderr
        assert "step_00000012: not committed" in r.stdout + r.stderr  # the half-written one was cleared first
    finally:
        watcher.stop.set()
        proxy.close()
        watcher.join()
    watcher.check()
    assert watcher.seen and all(watcher.seen.values()), watcher.seen  # never an incomplete checkpoint named
    assert set(watcher.seen) <= {4, 8, 12, 16} and 16 in watcher.seen

    got, ref = _metrics(f"{root}/runs/faults"), _metrics(reference_run)
    assert [x["step"] for x in got] == list(range(1, 17))
    for a, b in zip(ref, got):
        for k in ("itc_loss", "itm_loss", "itg_loss", "loss"):
            assert abs(a[k] - b[k]) <= 1e-6, (a["step"], k, a[k], b[k])
        assert a["keys"] == b["keys"]
