"""Training-step paths the end-to-end runs do not take, on the real step function (``train.train_step``) and
DeepSpeed engine, in one process (a world of 1): gradient accumulation, ZeRO 0 to 3, and fp16's CPU refusal.

Gradient accumulation is compared on stage 2, whose loss is a mean over caption tokens: with every caption the
same length and dropout off, 2 micro-batches of 4 are the same optimisation as one batch of 8. Stage 1 has no
such identity: ITC and ITM contrast each sample with the rest of its (micro-)batch, so accumulating changes the
loss itself (LAVIS does not accumulate in stage 1 either).
"""

import os
import random

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from pipeline.config import merge
from pipeline.stages import get_stage
from pipeline.train import Worker, deepspeed_config, train_step
from tests.procs import free_port


@pytest.fixture(scope="module")
def world_of_one():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("gloo")
    yield
    dist.destroy_process_group()


def _worker(stage_name, model_cfg, zoo, **train):
    import deepspeed

    stage = get_stage(stage_name)
    cfg = merge(stage.job_config(), OmegaConf.create({"data": {"uri": "unused"}, "model": OmegaConf.structured(
        model_cfg), "train": {"batch_size": 4, **train}, "optim": {"lr": 1e-3}}))
    torch.manual_seed(0)
    model = stage.new_model(cfg.model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg),
                                      dist_init_required=False)
    return Worker(stage, cfg, engine, None, 0, 1, "unused")


def _batches(pixels, captions, size):
    for i in range(0, len(captions), size):
        yield {"pixel_values": pixels[i:i + size], "caption": captions[i:i + size], "_wait": 0.0,
               "key": [str(k) for k in range(i, i + size)]}


def _trainable(w):
    return {n: p.detach().clone() for n, p in w.engine.module.named_parameters() if p.requires_grad}


def test_grad_accum_2_equals_double_batch(world_of_one, tiny_zoo, synthetic_batch):
    from demo.tiny_zoo import tiny_stage2

    x, _ = synthetic_batch
    captions = ["a red cube on the left"] * 8  # one token count: the token mean is the sample mean
    mcfg = tiny_stage2(tiny_zoo, "opt", dropout=0.0)
    big = _worker("stage2", mcfg, tiny_zoo, batch_size=8)
    acc = _worker("stage2", mcfg, tiny_zoo, batch_size=4, grad_accum=2)
    for step in range(3):
        xs = x[8 * step:8 * step + 8]
        a, _, _ = train_step(big, _batches(xs, captions, 8), random.Random(0))
        b, batch, _ = train_step(acc, _batches(xs, captions, 4), random.Random(0))
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-5, (step, float(a["loss"]), float(b["loss"]))
        assert batch["key"] == [str(k) for k in range(8)]  # the step's keys are both micro-batches'
        big.step, acc.step = big.step + 1, acc.step + 1
    pa, pb = _trainable(big), _trainable(acc)
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], atol=1e-5, rtol=1e-5, msg=k)


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_zero_stages_train_like_zero2(world_of_one, tiny_zoo, synthetic_batch, zero_stage):
    from demo.tiny_zoo import tiny_stage1

    x, caps = synthetic_batch
    mcfg = tiny_stage1(tiny_zoo, dropout=0.0)
    runs = {}
    for z in (2, zero_stage):
        w = _worker("stage1", mcfg, tiny_zoo, zero_stage=z, zero3_persistence_threshold=0)
        losses = []
        for step in range(3):
            out, _, _ = train_step(w, _batches(x[4 * step:4 * step + 4], caps[4 * step:4 * step + 4], 4),
                                   random.Random(0))
            losses.append(float(out["loss"]))
            w.step += 1
        runs[z] = losses
    assert all(abs(a - b) <= 1e-5 for a, b in zip(runs[2], runs[zero_stage])), runs
    assert runs[2][-1] < runs[2][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fp16_on_cpu_is_refused_naming_the_key(tiny_zoo):
    from demo.tiny_zoo import tiny_stage1

    cfg = merge(get_stage("stage1").job_config(), OmegaConf.create({
        "data": {"uri": "unused"}, "model": OmegaConf.structured(tiny_stage1(tiny_zoo)),
        "train": {"precision": "fp16"}}))
    with pytest.raises(ValueError, match="train.precision=fp16 needs a GPU"):
        deepspeed_config(cfg)
