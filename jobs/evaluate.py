"""Evaluate a model on a benchmark by its own protocol: retrieval (COCO 5k / Flickr30K 1k, 5 captions per image,
ITC top-k_test re-ranked by ITM), captioning (COCO Karpathy test, NoCaps val, COCO caption toolkit) and zero-shot
VQA (VQAv2, OK-VQA, GQA), the model work as Ray Data batch inference.

    python jobs/evaluate.py --config configs/eval_coco_retrieval.yaml data=.../coco_karpathy_test.json \\
        images=.../coco/images retrieval_model=CKPT_OR_FOLDER [output=results.json] [key=value ...]

Models: a checkpoint of jobs/stage1.py / stage2.py, a folder from jobs/export.py, or a released transformers
Blip2ForImageTextRetrieval / Blip2ForConditionalGeneration folder (local, s3:// or hub id). Captioning needs Java
(pycocoevalcap's PTB tokenizer). Results: printed beside the paper's numbers, and JSON at output=.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.evaluation.run import EvalConfig, evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return evaluate(load_config(EvalConfig, argv, description=__doc__.splitlines()[0]))


if __name__ == "__main__":
    main()
