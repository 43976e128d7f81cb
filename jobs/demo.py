"""The end-to-end demo on the built-in default: every stage that exists, on a CPU.

    python jobs/demo.py [--out DIR]      (default outputs/demo)

Stages built so far: synthetic data (train, held-out test and compositional splits) and the
stage-1 model overfitting a batch of it. Later stages (data prep, CapFilt, training jobs,
evaluation) are added here as they land; see the README's status table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataprep.synthetic import SyntheticConfig, generate  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    results: dict = {}
    print("[1/1] synthetic data", flush=True)
    syn = SyntheticConfig(num_samples=a.num_samples, num_test=200, num_compositional=100, seed=a.seed,
                          image_size=64, noise_fraction=0.3, samples_per_shard=500)
    uris = generate(syn, os.path.join(a.out, "data", "raw"))
    results["data"] = uris
    results["wall_seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
