"""Data preparation: image-text shards -> validation -> [CapFilt] -> Parquet, on Ray Data.

    python jobs/dataprep.py [--config configs/dataprep.yaml] input=URI output=URI [key=value ...]

Rerunning the same command after a crash finishes the remaining shards (resume).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from dataprep.config import DataprepConfig  # noqa: E402
from dataprep.run import run  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(DataprepConfig, argv, description=__doc__.splitlines()[0])
    storage.set_default(cfg.storage)  # exports the endpoint to the Ray workers too (never credentials)
    env = {"env_vars": {k: v for k, v in os.environ.items() if k in ("AWS_ENDPOINT_URL", "PYTHONPATH")}}
    ray.init(address=cfg.ray_address, ignore_reinit_error=True, runtime_env=env, log_to_driver=False,
             include_dashboard=False if cfg.ray_address == "local" else None)
    return run(cfg)


if __name__ == "__main__":
    main()
