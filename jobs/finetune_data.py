"""Standard fine-tuning annotations -> training records (data-prep Parquet), local or s3://.

    python jobs/finetune_data.py coco --annotations coco_karpathy_train.json --images COCO_ROOT --output OUT
    python jobs/finetune_data.py vqav2 --questions v2_OpenEnded_mscoco_train2014_questions.json \\
        --annotations v2_mscoco_train2014_annotations.json --images COCO_ROOT --output OUT

COCO_ROOT holds train2014/ and val2014/. Data-prep output needs no conversion: pass it to data.uri directly.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataprep.annotations import convert_coco_karpathy, convert_vqav2  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.storage import StorageConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("format", choices=["coco", "vqav2"])
    p.add_argument("--annotations", help="COCO Karpathy JSON, or the VQAv2 annotations file (omit for test questions)")
    p.add_argument("--questions", help="VQAv2 questions file")
    p.add_argument("--images", required=True, help="image root (local or s3://)")
    p.add_argument("--output", required=True)
    p.add_argument("--shard-size", type=int, default=1000, help="records per Parquet file")
    p.add_argument("--shorter-side", type=int, default=0, help="resize images whose shorter side is larger (0 = keep)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (MinIO, moto)")
    a = p.parse_args(argv)
    storage.set_default(StorageConfig(endpoint_url=a.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")))
    if a.format == "coco":
        if not a.annotations:
            p.error("coco needs --annotations")
        n = convert_coco_karpathy(a.annotations, a.images, a.output, a.shard_size, a.shorter_side)
    else:
        if not a.questions:
            p.error("vqav2 needs --questions")
        n = convert_vqav2(a.questions, a.annotations, a.images, a.output, a.shard_size, a.shorter_side)
    print(f"wrote {n} records to {a.output}/data/")
    return n


if __name__ == "__main__":
    main()
