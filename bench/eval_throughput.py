"""Retrieval-evaluation throughput: images/s of the embedding pass (one ViT + Q-Former pass per image) and pairs/s of
the ITM re-ranking (one Q-Former multimodal pass per pair on cached image embeddings), through the same Ray Data
actor pools as jobs/evaluate.py.

    python bench/eval_throughput.py [--images 64] [--k-test 8] [--preset base] [--out bench/results/x.json]

Presets (random weights: throughput depends on shapes only):
- ``base``: a ViT-B-shaped image encoder (224 px, patch 16, width 768, 12 layers) and the paper's Q-Former shape
  (BERT-base: width 768, 12 layers, 32 queries, cross-attention every 2nd layer), 35 text tokens;
- ``tiny``: the test zoo's models (32 px), for a quick smoke run.
Times are the actors' model time (decode + forward), without actor start-up; one actor per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _dataset(root: str, n: int, size: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    anns = []
    for i in range(n):
        name = f"images/{i:06d}.jpg"
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(os.path.join(root, name), quality=90)
        anns.append({"image": name, "caption": [f"caption {j} of image {i}, a photo of something" for j in range(5)]})
    path = os.path.join(root, "test.json")
    with open(path, "w") as f:
        json.dump(anns, f)
    return path


def _model(root: str, preset: str) -> str:
    from demo.tiny_zoo import build_tiny_zoo, save_tiny_vision, tiny_stage1
    from pipeline.models.export import export_stage1
    from pipeline.models.qformer import QFormerConfig
    from pipeline.models.stage1 import Blip2Stage1, Stage1ModelConfig
    from pipeline.models.vision import VisionConfig

    zoo = build_tiny_zoo(os.path.join(root, "zoo"))
    if preset == "tiny":
        cfg = tiny_stage1(zoo)
    else:
        save_tiny_vision(os.path.join(root, "vit-b"), image_size=224, patch=16, hidden=768, layers=12, heads=12)
        cfg = Stage1ModelConfig(
            vision=VisionConfig(name_or_path=os.path.join(root, "vit-b"), dtype="fp32", drop_last_layer=False),
            qformer=QFormerConfig(tokenizer=zoo["bert"], bert_init=None, num_query_tokens=32, hidden_size=768,
                                  num_layers=12, num_heads=12, intermediate_size=3072, cross_attention_freq=2,
                                  embed_dim=256, max_txt_len=35, max_position_embeddings=512))
    return export_stage1(Blip2Stage1(cfg).eval(), os.path.join(root, "model"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--k-test", type=int, default=8)
    ap.add_argument("--preset", choices=("base", "tiny"), default="base")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import ray

    from pipeline.config import merge
    from pipeline.evaluation import annotations as A
    from pipeline.evaluation.image_source import ImageSource
    from pipeline.evaluation.run import EvalConfig, evaluate_retrieval

    root = tempfile.mkdtemp(prefix="eval-bench-")
    data = _dataset(root, a.images, 224 if a.preset == "base" else 32)
    model = _model(root, a.preset)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    cfg = merge(EvalConfig, {"data": data, "retrieval_model": model, "retrieval": {"k_test": a.k_test},
                             "inference": {"batch_size": a.batch_size, "pair_batch_size": 4 * a.batch_size}})
    ev = A.read("karpathy", data)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = evaluate_retrieval(cfg, ev, ImageSource(ev.image_root))
    wall = time.perf_counter() - t0
    ray.shutdown()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out = {"preset": a.preset, "images": a.images, "texts": r["retrieval_texts"], "k_test": a.k_test,
           "device": gpu or f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
           "torch_threads": torch.get_num_threads(),
           # the 1-minute load average before and after: on a shared machine the figures scale with it
           "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)], **r["retrieval_throughput"], "cost": r["retrieval_cost"],
           "pass_seconds_with_startup": r["retrieval_seconds"], "wall_seconds": wall,
           "date": time.strftime("%Y-%m-%d", time.gmtime())}
    print(json.dumps(out, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
