"""Stage 2: train the Q-Former + projection into a frozen LLM (OPT: LM loss; Flan-T5: prefix LM) on Ray Train + DeepSpeed.

    python jobs/stage2.py --config configs/stage2.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/stage2.py --config configs/stage2.yaml train.num_workers=16 ...

Starts from init_from=<stage-1 checkpoint URI> (or init_from_hf=<Blip2ForConditionalGeneration folder>).
Rerunning the same command (same train.run_name and train.storage_path) resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.train import fit  # noqa: E402
from pipeline.train_config import Stage2JobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(Stage2JobConfig, argv, description=__doc__.splitlines()[0])
    metrics = fit(cfg, "stage2")
    print(f"stage 2 finished: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
