"""Metrics that only make sense on the demo's synthetic data (it knows each image's main object)."""

from __future__ import annotations

import numpy as np

from demo.synthetic import SHAPE_SYNONYMS


def attribute_accuracy(captions: list[str], objects: list[dict]) -> float:
    """Fraction of captions naming the main object's colour and shape (any synonym) in the synthetic data."""
    hits = []
    for cap, obj in zip(captions, objects):
        words = f" {cap.lower()} "
        colour = f" {obj['colour']} " in words
        shape = any(f" {s} " in words for s in SHAPE_SYNONYMS[obj["shape"]])
        hits.append(colour and shape)
    return float(np.mean(hits)) if hits else 0.0
