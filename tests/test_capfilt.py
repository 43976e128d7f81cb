"""CapFilt on Ray Data with models this project trained: the filter flags the noisy web captions."""

import io
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dataprep.capfilt import two_means_threshold
from demo.synthetic import SyntheticConfig, generate, make_sample
from pipeline import storage


@pytest.mark.slow
def test_capfilt_flags_noisy_captions_better_than_chance(tmp_path, tiny_zoo):
    import ray

    from dataprep.config import DataprepConfig
    from dataprep.run import run
    from demo.tiny_zoo import pretrain_vision, tiny_stage1, tiny_stage2
    from pipeline.config import merge
    from pipeline.images import to_pixel_values
    from pipeline.losses import stage1_losses
    from pipeline.models.export import export_stage1, export_stage2
    from pipeline.models.stage1 import Blip2Stage1
    from pipeline.models.stage2 import Blip2Stage2

    syn = SyntheticConfig(num_samples=400, samples_per_shard=100, image_size=64, noise_fraction=0.3)
    generate(syn, str(tmp_path / "raw"))
    samples = [make_sample(syn, "train", i) for i in range(400)]
    zoo = {**tiny_zoo, "vision": str(tmp_path / "vit")}
    pretrain_vision([make_sample(SyntheticConfig(image_size=64), "train", 10_000 + i) for i in range(1000)],
                    zoo["vision"], steps=200)

    # the filter: a tiny stage-1 trained on the noisy pairs themselves, as CapFilt is used
    torch.manual_seed(0)
    rng = random.Random(0)
    m = Blip2Stage1(tiny_stage1(zoo, bert_init=None, hidden_size=64, intermediate_size=128, num_heads=4)).train()
    x = to_pixel_values([s["jpg"] for s in samples], 64)
    caps = [s["txt"] for s in samples]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.98),
                            weight_decay=0.05)
    for _ in range(300):
        idx = rng.sample(range(400), 32)
        loss = stage1_losses(m(x[idx], **m.tokenize([caps[i] for i in idx])))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    export_stage1(m.eval(), str(tmp_path / "filter"))
    export_stage2(Blip2Stage2(tiny_stage2(zoo, "opt")).eval(), str(tmp_path / "captioner"))

    def prep(out, **filter_cfg):
        cfg = merge(DataprepConfig, {
            "input": str(tmp_path / "raw"), "output": str(tmp_path / out), "validate": {"min_size": 32,
                                                                                       "resize_shorter_side": 64},
            "capfilt": {"enabled": True,
                        "captioner": {"model": str(tmp_path / "captioner"), "num_captions": 2, "max_length": 8,
                                      "batch_size": 32, "num_cpus": 0.5},
                        "filter": {"model": str(tmp_path / "filter"), "mode": "topk", "top_k": 2, "batch_size": 32,
                                   "num_cpus": 0.5, **filter_cfg}}})
        summary = run(cfg)
        rows = [r for u in storage.glob(str(tmp_path / out / "data" / "*.parquet"))
                for r in pq.read_table(io.BytesIO(storage.read_bytes(u))).to_pylist()]
        return summary, rows

    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        s1, rows = prep("scored")
        assert s1["read"] == 400 == s1["kept"] + s1["filtered"] + s1["rejected"]
        assert all(len(r["synthetic_captions"]) <= 2 and len(r["candidate_scores"]) == 1 + len(r["synthetic_captions"])
                   for r in rows)
        assert all(len(r["kept_captions"]) <= 2 for r in rows)
        web_scores = np.array([r["candidate_scores"][0] for r in rows])
        th = two_means_threshold(web_scores)
        s2, rows2 = prep("filtered", min_similarity=th)
    finally:
        ray.shutdown()
    assert s2["read"] == 400 == s2["kept"] + s2["filtered"] + s2["rejected"]
    noisy = {r["key"]: json.loads(r["meta"])["noisy"] for r in rows}
    dropped = {r["key"]: not r["web_caption_kept"] for r in rows2}
    dropped.update({k: True for k in noisy if k not in dropped})  # records filtered entirely lost the web caption
    tp = sum(dropped[k] and noisy[k] for k in noisy)
    precision = tp / max(1, sum(dropped.values()))
    recall = tp / max(1, sum(noisy.values()))
    noise_rate = sum(noisy.values()) / len(noisy)
    drop_rate = sum(dropped.values()) / len(dropped)
    print(f"capfilt precision {precision:.3f} (chance {noise_rate:.3f}), recall {recall:.3f} (chance {drop_rate:.3f})")
    assert precision > noise_rate and recall > drop_rate
