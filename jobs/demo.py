"""The end-to-end demo on the built-in default: every stage that exists so far, on a CPU.

    python jobs/demo.py [--out DIR]      (default outputs/demo)

Built so far: synthetic data (train with 30% noisy captions, held-out test and compositional splits),
tiny unimodal models saved/reloaded through from_pretrained (the LLM pretrained on caption text),
stage 1 and stage 2 trained in-process for a few hundred steps, and the export of both to the
transformers layout (<out>/hf_retrieval, <out>/hf_model). Ray Data prep, CapFilt, the Ray Train jobs
and evaluation are not built yet (see the README's status table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dataprep.synthetic import SyntheticConfig, generate  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.images import to_pixel_values  # noqa: E402
from pipeline.losses import stage1_losses, stage2_losses  # noqa: E402
from pipeline.models.export import export_stage1, export_stage2  # noqa: E402
from pipeline.models.presets import tiny_stage1, tiny_stage2  # noqa: E402
from pipeline.models.stage1 import Blip2Stage1  # noqa: E402
from pipeline.models.stage2 import Blip2Stage2  # noqa: E402
from pipeline.models.tiny import build_tiny_zoo, pretrain_llm  # noqa: E402


def read_shards(pattern: str) -> list[dict]:
    out = []
    for path in storage.glob(pattern):
        with tarfile.open(path) as tar:
            files: dict[str, dict] = {}
            for m in tar.getmembers():
                key, ext = m.name.rsplit(".", 1)
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()
        out += [files[k] for k in sorted(files)]
    return out


def fit(model, batches, loss_fn, steps, lr, log_every=50, name=""):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.98),
                            weight_decay=0.05)
    model.train()
    curve = []
    for step in range(steps):
        losses = loss_fn(batches(step))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        curve.append({k: round(float(v), 4) for k, v in losses.items()})
        if step % log_every == 0 or step == steps - 1:
            print(f"  {name} step {step:4d} " + " ".join(f"{k}={v:.3f}" for k, v in curve[-1].items()), flush=True)
    return curve


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.yaml"), "w") as f:  # the resolved settings, next to the outputs
        f.write("".join(f"{k}: {v}\n" for k, v in sorted(vars(a).items())))
    size = 32

    print("[1/5] synthetic data", flush=True)
    syn = SyntheticConfig(num_samples=a.num_samples, num_test=200, num_compositional=100, seed=a.seed,
                          image_size=64, noise_fraction=0.3, samples_per_shard=500)
    uris = generate(syn, os.path.join(a.out, "data", "raw"))
    train = read_shards(os.path.join(uris["train"], "*.tar"))
    clean = [s for s in train if not json.loads(s["json"])["noisy"]]
    captions = [s["txt"].decode() for s in clean]

    print("[2/5] tiny unimodal models (saved and reloaded through from_pretrained)", flush=True)
    zoo = build_tiny_zoo(os.path.join(a.out, "zoo"), image_size=size, seed=a.seed)
    zoo["opt"] = os.path.join(a.out, "zoo", "opt-pretrained")
    lm_loss = pretrain_llm(os.path.join(a.out, "zoo", "opt"), captions, zoo["opt"], steps=a.steps, seed=a.seed)
    print(f"  LLM pretrained on {len(captions)} captions, final loss {lm_loss:.3f}")

    def batch(step):
        picked = rng.sample(train, a.batch)
        return to_pixel_values([s["jpg"] for s in picked], size), [s["txt"].decode() for s in picked]

    print("[3/5] stage 1 (ITC + ITM + ITG) on the noisy data", flush=True)
    s1 = Blip2Stage1(tiny_stage1(zoo, bert_init=None, hidden_size=64, intermediate_size=128, num_heads=4))
    curve1 = fit(s1, batch, lambda b: stage1_losses(s1(b[0], **s1.tokenize(b[1]))), a.steps, 1e-3, name="stage1")

    print("[4/5] stage 2 (decoder-only LLM) from the stage-1 weights", flush=True)
    s2 = Blip2Stage2(tiny_stage2(zoo, "opt", hidden_size=64, intermediate_size=128, num_heads=4))
    s2.load_stage1(s1.state_dict())
    curve2 = fit(s2, batch, lambda b: stage2_losses(s2(b[0], **s2.tokenize(b[1]))), a.steps, 1e-3, name="stage2")

    print("[5/5] export to the transformers layout", flush=True)
    export_stage1(s1.eval(), os.path.join(a.out, "hf_retrieval"))
    export_stage2(s2.eval(), os.path.join(a.out, "hf_model"))
    test = read_shards(os.path.join(uris["test"], "*.tar"))[:4]
    examples = [{"caption": s["txt"].decode(), "generated": g} for s, g in zip(
        test, s2.generate(to_pixel_values([s["jpg"] for s in test], size), num_beams=5, max_new_tokens=20))]

    results = {"data": uris, "stage1_first": curve1[0], "stage1_last": curve1[-1], "stage2_first": curve2[0],
               "stage2_last": curve2[-1], "examples": examples, "wall_seconds": round(time.time() - t0, 1)}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(a.out, "loss_curves.json"), "w") as f:
        json.dump({"stage1": curve1, "stage2": curve2}, f)
    print(json.dumps({k: v for k, v in results.items() if k != "data"}, indent=2))
    return results


if __name__ == "__main__":
    main()
