"""Fine-tune a pretrained BLIP-2 (captioning, VQA or retrieval) on Ray Train + DeepSpeed.

    python jobs/finetune.py --config configs/finetune_caption.yaml init_from=<stage-2 checkpoint> data.uri=...
    python jobs/finetune.py --config configs/finetune_vqa.yaml init_from=<stage-2 checkpoint> data.uri=...
    python jobs/finetune.py --config configs/finetune_retrieval.yaml init_from=<stage-1 checkpoint> data.uri=...

The config's ``recipe`` (caption | vqa | retrieval) picks the schema; key=value overrides follow it. Rerunning
the same command resumes from the run's latest checkpoint; jobs/export.py exports any of its checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import ConfigError, load_config, load_yaml, parse_overrides  # noqa: E402
from pipeline.finetune_config import JOB_CONFIGS  # noqa: E402
from pipeline.train import fit  # noqa: E402


def recipe_of(argv: list[str]) -> str:
    """The ``recipe`` named by an override, else by the config file."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    known, rest = p.parse_known_args(argv)
    recipe = parse_overrides([a for a in rest if "=" in a]).get("recipe")
    if recipe is None and known.config:
        recipe = load_yaml(known.config).get("recipe")
    if recipe not in JOB_CONFIGS:
        raise ConfigError(f"config key 'recipe': {recipe!r}, expected one of {sorted(JOB_CONFIGS)}")
    return recipe


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    recipe = recipe_of(argv)
    cfg = load_config(JOB_CONFIGS[recipe], argv, description=__doc__.splitlines()[0])
    metrics = fit(cfg, f"finetune_{recipe}")
    print(f"fine-tuning ({recipe}) finished: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
