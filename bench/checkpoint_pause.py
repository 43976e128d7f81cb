"""Checkpoint pause: how long one checkpoint blocks the step loop, at the paper's stage-1 size, 1 CPU worker.

    python bench/checkpoint_pause.py [--checkpoints 2] [--storage moto|DIR|s3://...] [--zero-stage 2]

The model is the paper's stage-1 trainable part: a BERT-base Q-Former (12 layers, 768 wide, 32 queries, vocab
30,523) with its ITC/ITM/ITG heads and ln_vision against a 1,408-wide vision tower, about 188M trainable
parameters, trained one step with AdamW under DeepSpeed so that the optimizer state exists. The vision tower is a
one-block stand-in of ViT-g's width: it is frozen and never saved, so its depth does not change the checkpoint.
Each checkpoint calls the training loop's own ``save_checkpoint``; "blocked" is the time it returns after (local
write, and the ZeRO-3 gather where it applies), "committed" the time until the background upload is in and
``latest.json`` names it (what the loop was blocked for before uploads moved off it).
``--storage moto`` (default) starts a moto S3 server on loopback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def _tokenizer(d: str) -> str:
    """A BERT-base-sized WordPiece tokenizer (30,522 tokens; + [DEC] = 30,523) made offline."""
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(30522 - len(special) - 26)] + [chr(97 + i) for i in range(26)]
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(special + words) + "\n")
    BertTokenizerFast(os.path.join(d, "vocab.txt")).save_pretrained(d)
    return d


def _vision(d: str) -> str:
    from transformers import Blip2VisionConfig, Blip2VisionModel

    Blip2VisionModel(Blip2VisionConfig(hidden_size=1408, intermediate_size=1408, num_hidden_layers=1,
                                       num_attention_heads=16, image_size=28, patch_size=14)).save_pretrained(d)
    return d


def _moto() -> tuple[subprocess.Popen, str]:
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench-key-id", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            return proc, endpoint
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=2)
    p.add_argument("--storage", default="moto", help="moto (a local moto S3 server), a folder, or s3://bucket/path")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps-during-upload", type=int, default=0, help="training steps run while each upload runs")
    a = p.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29591"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from pipeline import storage
    from pipeline.checkpoint_upload import CheckpointUploader
    from pipeline.config import merge
    from pipeline.optim import param_groups
    from pipeline.stages import get_stage
    from pipeline.train import deepspeed_config, save_checkpoint

    work = tempfile.mkdtemp(prefix="ckpt-bench-")
    stage = get_stage("stage1")
    cfg = merge(stage.job_config(), OmegaConf.create({
        "data": {"uri": "unused: the bench feeds its own batch"},
        "model": {"vision": {"name_or_path": _vision(os.path.join(work, "vision")), "dtype": "fp32"},
                  "qformer": {"tokenizer": _tokenizer(os.makedirs(os.path.join(work, "tok")) or
                                                      os.path.join(work, "tok")), "bert_init": None}},
        "train": {"batch_size": a.batch, "zero_stage": a.zero_stage, "storage_path": a.storage,
                  "run_name": "pause", "num_to_keep": 1}}))
    moto = None
    dist.init_process_group("gloo")
    try:
        if a.storage == "moto":
            moto, endpoint = _moto()
            cfg.train.storage_path = "s3://bench/runs"
            storage.set_default(storage.StorageConfig(endpoint_url=endpoint, region="us-east-1"))
        model = stage.build(cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-5)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg),
                                          dist_init_required=False)
        batch = {"pixel_values": torch.randn(a.batch, 3, 28, 28), "caption": ["a photo of a cat"] * a.batch}

        def step() -> float:
            t0 = time.time()
            out = engine(**stage.inputs(engine.module, batch, engine.device, None))
            engine.backward(stage.losses(out)["loss"])
            engine.step()
            return time.time() - t0

        first = step()  # creates the AdamW state
        print(f"stage-1 trainable parameters: {trainable / 1e6:.1f}M; ZeRO-{a.zero_stage}, {torch.get_num_threads()} "
              f"torch threads; one step {first:.1f} s (batch {a.batch}); storage {cfg.train.storage_path}", flush=True)
        uploader = CheckpointUploader(0, 1)
        run_uri = storage.join(cfg.train.storage_path, "pause")
        for i in range(1, a.checkpoints + 1):
            t0 = time.time()
            uri = save_checkpoint(engine, engine.module, stage, cfg, run_uri, i, {"epoch": 0}, uploader)
            blocked = time.time() - t0
            print(f"checkpoint {i}: the step loop was blocked {blocked:.2f} s", flush=True)
            during = []
            for _ in range(a.steps_during_upload):
                during.append(step())
            uploader.wait()
            total = time.time() - t0
            fs, path = storage.filesystem(uri)
            print(f"checkpoint {i}: committed {total:.2f} s after the save began ({fs.du(path) / 1e9:.2f} GB)"
                  + (f"; {len(during)} step(s) meanwhile, {sum(during) / len(during):.1f} s each" if during else ""),
                  flush=True)
    finally:
        dist.destroy_process_group()
        if moto:
            moto.terminate()


if __name__ == "__main__":
    main()
