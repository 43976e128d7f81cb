"""CapFilt on one GPU: images/s of the captioner (K captions each) and of the filter, and how busy the GPU is.

    python bench/capfilt_gpu.py [--size paper] [--images 1024] [--runs captioner:64:1 filter:256:8 ...]
                                [--json FILE]

Models: demo/capfilt_models.py at the paper's architectures (BLIP ViT-L/16-384 captioner with its BERT-base
decoder, CLIP ViT-L/14 filter), random init, float16. Random weights never emit the end token, so every caption
runs to max_length (30): the captioner figures are its worst case. Each run is ``stage:batch:prepare_threads``
and executes the actor's own code (dataprep.capfilt.ShardStage.run) in this process, whole shards at a time,
on validated 384-px photo-like JPEGs; the filter ranks the captioner's real output (web + K captions).

Per run it prints: images/s; GPU busy = NVML's utilization (share of time a kernel was running) sampled every
50 ms over the timed window; model share = wall time inside the model calls (``apply``) / wall time, the rest
being waits for decoding; thread time in decoding + preprocessing per image (``prepare``, summed over
threads); the process's CPU cores busy; and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.photo_like import photo_like_sample  # noqa: E402
from dataprep.capfilt import ShardStage  # noqa: E402
from dataprep.config import ValidateConfig  # noqa: E402
from dataprep.validate import validate  # noqa: E402
from demo.capfilt_models import save_capfilt_models  # noqa: E402

DEFAULT_RUNS = ["captioner:128:4", "captioner:32:1", "captioner:64:1", "captioner:64:4", "captioner:256:4",
                "filter:64:1", "filter:256:1", "filter:256:4", "filter:256:8", "filter:512:8"]


def record(i: int) -> dict:
    s = photo_like_sample(i, 512)
    return validate({"key": s["key"], "source_shard": "bench", "offset": i, "image": s["jpg"],
                     "caption": s["txt"].encode()}, ValidateConfig())


class BusySampler:
    """Mean NVML GPU utilization between start() and stop(), polled every 50 ms (None without NVML). NVML's
    figure covers its last sample period (up to 1 s), so polls from the first second, which would count the
    warm-up before start(), are left out."""

    SKIP_S = 1.0

    def __init__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception as e:  # no GPU or no NVML: busy is not measured
            self.nvml = None
            if torch.cuda.is_available():
                print(f"warning: NVML unavailable ({e!r}): GPU busy will not be measured", flush=True)

    def start(self):
        self.samples, self.stopped = [], threading.Event()
        if self.nvml:
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()

    def _poll(self):
        t0 = time.perf_counter()
        while not self.stopped.wait(0.05):
            if time.perf_counter() - t0 >= self.SKIP_S:
                self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def stop(self) -> float | None:
        self.stopped.set()
        if self.nvml:
            self.thread.join()
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def timed(stage: ShardStage) -> dict:
    """Wrap the stage's prepare/apply to add up their seconds."""
    clock = {"prepare": 0.0, "apply": 0.0}
    lock = threading.Lock()

    def wrap(fn, key):
        def inner(*a):
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                with lock:
                    clock[key] += time.perf_counter() - t
        return inner

    stage.stage.prepare = wrap(type(stage.stage).prepare.__get__(stage.stage), "prepare")
    stage.stage.apply = wrap(type(stage.stage).apply.__get__(stage.stage), "apply")
    return clock


def measure(stage: ShardStage, clock: dict, records: list[dict], batch: int, threads: int, shard: int,
            sampler: BusySampler) -> tuple[dict, list[dict]]:
    from concurrent.futures import ThreadPoolExecutor

    stage.batch_size, stage.threads = batch, threads
    stage.pool.shutdown()
    stage.pool = ThreadPoolExecutor(threads)
    stage.run(records[:batch])  # warm-up: kernels and allocator at this batch shape
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock.update(prepare=0.0, apply=0.0)
    out = []
    sampler.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(records), shard):
        out += stage.run(records[i:i + shard])
    wall = time.perf_counter() - t0
    cores = (time.process_time() - cpu0) / wall
    busy = sampler.stop()
    n = len(records)
    return {"images": n, "images_per_s": round(n / wall, 1), "gpu_busy": None if busy is None else round(busy, 3),
            "model_share": round(clock["apply"] / wall, 3),
            "prepare_thread_ms_per_image": round(clock["prepare"] / n * 1000, 2), "cpu_cores_busy": round(cores, 2),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
            "wall_s": round(wall, 1)}, out


def prepare_rate(stage: ShardStage, records: list[dict], batch: int, threads: int) -> dict:
    """Images/s that ``threads`` threads of the stage's CPU part (decode, preprocess, tokenize, draws) supply:
    the most a GPU actor with that many prepare threads can consume."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    df = pd.DataFrame(records)
    chunks = [df.iloc[i:i + batch] for i in range(0, len(df), batch)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(stage.stage.prepare, chunks[:threads]))  # warm-up
        t0, cpu0 = time.perf_counter(), time.process_time()
        list(pool.map(stage.stage.prepare, chunks))
        wall = time.perf_counter() - t0
    return {"images": len(df), "prepare_images_per_s": round(len(df) / wall, 1),
            "cpu_cores_busy": round((time.process_time() - cpu0) / wall, 2),
            "cpu_ms_per_image": round((time.process_time() - cpu0) / len(df) * 1000, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="paper", choices=["paper", "tiny"])
    p.add_argument("--images", type=int, default=1024, help="timed images per captioner run (filter: 2x)")
    p.add_argument("--shard", type=int, default=512, help="images per ShardStage.run call (one Ray Data row)")
    p.add_argument("--num-captions", type=int, default=10)
    p.add_argument("--max-length", type=int, default=30)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="stage:batch:prepare_threads")
    p.add_argument("--torch-threads", type=int, default=2,
                   help="intra-op threads, as Ray gives an actor of num_cpus=2 (OMP_NUM_THREADS)")
    p.add_argument("--prepare-only", action="store_true",
                   help="time only the stages' CPU part (no model calls): what prepare threads can feed a GPU")
    p.add_argument("--json", default=None, help="append one JSON line per run")
    a = p.parse_args()
    torch.set_num_threads(a.torch_threads)
    t0 = time.time()
    with Pool(os.cpu_count()) as workers:
        records = workers.map(record, range(2 * a.images), chunksize=16)
    print(f"{len(records)} validated 384-px records in {time.time() - t0:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        torch.manual_seed(0)
        cap, fil = save_capfilt_models(d, a.size, dtype=torch.float16 if a.size == "paper" else None)
        print(f"{a.size} models built in {time.time() - t0:.0f} s", flush=True)
        on_gpu = {"num_gpus": 1, "dtype": a.dtype}
        stages = {"captioner": ShardStage("captioner", {"model": cap, "num_captions": a.num_captions, "top_p": 0.9,
                                                        "max_length": a.max_length, "prompt": "a picture of ", **on_gpu}),
                  "filter": ShardStage("filter", {"model": fil, "mode": "topk", "top_k": 2, **on_gpu})}
    clocks = {k: timed(s) for k, s in stages.items()}
    sampler = BusySampler()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {gpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}, K={a.num_captions}, max_length={a.max_length}")
    captioned = None
    if a.prepare_only:  # the filter ranks stand-in captions: other samples' web captions
        captioned = [{**r, "synthetic_captions": [records[(i + k) % len(records)]["web_caption"]
                                                  for k in range(1, a.num_captions + 1)]} for i, r in enumerate(records)]
    for run in a.runs:
        name, batch, threads = run.split(":")
        if a.prepare_only:
            res = prepare_rate(stages[name], records if name == "captioner" else captioned, int(batch), int(threads))
            print(json.dumps({"device": "cpu", "stage": name, "batch": int(batch), "prepare_threads": int(threads),
                              "torch_threads": a.torch_threads, **res}), flush=True)
            continue
        if name == "filter" and captioned is None:
            raise SystemExit("list a captioner run before the filter runs: the filter ranks its captions")
        data = records[:a.images] if name == "captioner" else captioned
        try:
            res, out = measure(stages[name], clocks[name], data, int(batch), int(threads), a.shard, sampler)
        except torch.OutOfMemoryError as e:  # record it and go on with the next run
            sampler.stop()
            res, out = {"error": f"out of memory: {str(e).splitlines()[0]}"}, None
        if out is None:
            torch.cuda.empty_cache()  # after the except block, which held the failed call's tensors
        if captioned is None and out is not None:  # the filter's input: all 2x images, captioned
            captioned = out + stages[name].run(records[a.images:])
        res = {"device": gpu, "stage": name, "batch": int(batch), "prepare_threads": int(threads), "size": a.size,
               "dtype": a.dtype, "num_captions": a.num_captions, **res}
        print(json.dumps(res), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
