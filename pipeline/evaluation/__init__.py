"""Evaluation by the benchmarks' own protocols.

- ``annotations``: readers for the standard annotation files -> :class:`EvalSet`;
- ``image_source``: the pixels (a folder beside the annotations, Parquet or WebDataset);
- ``models``: any model (checkpoint, exported or released transformers folder);
- ``retrieval`` / ``captioning`` / ``vqa``: the metrics, by the official rules;
- ``inference``: the model work as Ray Data batch inference on actor pools;
- ``paper``: the paper's numbers and the side-by-side table;
- ``run``: :func:`run.evaluate`, what ``jobs/evaluate.py`` calls.
"""
