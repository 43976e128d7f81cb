"""Stage 1: train the Q-Former against the frozen image encoder (ITC + ITM + ITG) on Ray Train + DeepSpeed.

    python jobs/stage1.py --config configs/stage1.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/stage1.py --config configs/stage1.yaml train.num_workers=16 ...

Rerunning the same command (same train.run_name and train.storage_path) resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.train import fit  # noqa: E402
from pipeline.train_config import Stage1JobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(Stage1JobConfig, argv, description=__doc__.splitlines()[0])
    metrics = fit(cfg, "stage1")
    print(f"stage 1 finished: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
