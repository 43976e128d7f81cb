"""Export a stage-1 or stage-2 checkpoint to the transformers layout.

    python jobs/export.py --checkpoint URI --out DIR [--endpoint-url URL]

Stage 1 -> Blip2ForImageTextRetrieval folder; stage 2 -> Blip2ForConditionalGeneration folder. URI and
DIR may be local or s3://.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import storage  # noqa: E402
from pipeline.stages import load_model  # noqa: E402
from pipeline.storage import StorageConfig  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (MinIO, moto)")
    a = p.parse_args(argv)
    scfg = StorageConfig(endpoint_url=a.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    storage.set_default(scfg)
    stage, model = load_model(a.checkpoint, scfg)
    model.eval()
    if storage.is_s3(a.out):
        with tempfile.TemporaryDirectory() as d:
            stage.export(model, d)
            storage.upload_dir(d, a.out, scfg)
    else:
        stage.export(model, a.out)
    print(f"exported {stage.name} checkpoint {a.checkpoint} -> {a.out} ({stage.hf_class})")
    return a.out


if __name__ == "__main__":
    main()
