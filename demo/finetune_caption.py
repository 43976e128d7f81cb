"""Captioning fine-tuning on a finished demo run, compared with stage 2 alone (run after jobs/demo.py):

    python -m demo.finetune_caption --demo outputs/demo [--steps 600] [--lr 3e-4]

Starts from the demo's stage-2 checkpoint and runs the captioning recipe (pipeline/finetune_stages.py) with the
image encoder unfrozen, on a clean synthetic set (no noisy captions: the demo's stand-in for COCO's human
captions; its own seed, so no image of the held-out split). Then both models caption the demo's held-out split
through jobs/evaluate.py. Writes <demo>/finetune_caption.json.

Two settings differ from the paper's recipe, because the demo's parts are tiny: the image size stays at the
tower's 64 px (no 224 -> 364 step), and the prompt is empty, as in the demo's stage 2 (its LLM was pretrained on
bare captions; with "a photo of" it has to learn the prompt first). Like the demo, no crop or flip.
"""

from __future__ import annotations

import argparse
import json
import os

from omegaconf import OmegaConf

from dataprep.config import DataprepConfig
from demo.metrics import attribute_accuracy
from demo.run import CAPTION_EVAL, DATA, _evaluate, _test_records, start_ray, stop_ray, synthetic_config
from demo.synthetic import SyntheticConfig, generate
from pipeline.config import merge


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="outputs/demo", help="the --out folder of a finished jobs/demo.py run")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--samples", type=int, default=3000, help="size of the clean fine-tuning set")
    a = p.parse_args(argv)
    demo = os.path.abspath(a.demo)
    done = json.load(open(os.path.join(demo, "results.json")))
    run_args = OmegaConf.load(os.path.join(demo, "config.yaml"))  # the demo's --seed and --quick
    out = os.path.join(demo, "finetune_caption")

    saved = start_ray()
    from dataprep.run import run as dataprep_run
    from pipeline.checkpoint import read_meta
    from pipeline.finetune_config import CaptionJobConfig
    from pipeline.train import fit

    clean = SyntheticConfig(num_samples=a.samples, num_test=0, seed=run_args.seed + 2, image_size=64,
                            noise_fraction=0.0)
    raw = generate(clean, os.path.join(out, "data", "raw"))["train"]
    dataprep_run(merge(DataprepConfig, {"input": raw, "output": os.path.join(out, "data", "prepped"),
                                        "validate": {"min_size": 32, "resize_shorter_side": 64}}))
    stage2 = json.load(open(os.path.join(demo, "runs", "stage2", "latest.json")))["uri"]
    model = read_meta(stage2).model
    model.vision.update({"trainable": True, "image_size": 0, "grad_checkpointing": False})
    model.update({"prompt": "", "prefix_split": False})
    cfg = merge(CaptionJobConfig, {
        "model": model, "init_from": stage2, "data": {**DATA, "uri": os.path.join(out, "data", "prepped")},
        "optim": {"lr": a.lr, "min_lr": 0.0, "warmup_steps": 20},
        "train": {"run_name": "finetune_caption", "storage_path": os.path.join(out, "runs"), "max_steps": a.steps,
                  "checkpoint_every": a.steps, "batch_size": 32, "num_workers": 1, "cpus_per_worker": 1,
                  "zero_stage": 2, "log_every": 50, "seed": run_args.seed}})
    fit(cfg, "finetune_caption")
    tuned = json.load(open(os.path.join(out, "runs", "finetune_caption", "latest.json")))["uri"]
    ev = _evaluate(os.path.join(out, "eval.json"), data=os.path.join(demo, "data", "raw", "test"),
                   caption_model=tuned, **CAPTION_EVAL)  # the demo's own evaluation settings
    stop_ray(saved)
    records = _test_records(synthetic_config(run_args.seed, run_args.quick))
    acc = attribute_accuracy([ev["caption_generated"][r["key"]] for r in records], [r["objects"][0] for r in records])
    results = {"stage2_caption_attribute_accuracy": done["caption_attribute_accuracy"],
               "finetuned_caption_attribute_accuracy": acc, "stage2_caption_cider": done["caption_cider"],
               "finetuned_caption_cider": ev["caption_cider"], "steps": a.steps, "lr": a.lr, "samples": a.samples}
    with open(os.path.join(demo, "finetune_caption.json"), "w") as f:
        json.dump(results, f, indent=2)
    for k, v in results.items():
        print(f"{k:40s} {v}")
    return results


if __name__ == "__main__":
    main()
