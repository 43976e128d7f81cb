"""``evaluate(cfg)``: one evaluation set, read by its own format, scored by the benchmark's protocol.

- retrieval (stage-1 model): one ViT pass per image, one text pass per caption, ITC over all pairs, the top
  ``k_test`` per query re-ranked with ITM + ITC on the cached image embeddings; TR/IR@1/5/10 in percent;
- captioning (stage-2 model): beam search with the paper's prompt, COCO caption toolkit metrics (per domain on
  NoCaps);
- VQA (stage-2 model): every question, the paper's zero-shot prompt, beam search with a length penalty, the
  official VQA accuracy (GQA: normalised exact match).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline import storage
from pipeline.evaluation import annotations as A
from pipeline.evaluation.captioning import ALL_METRICS, caption_scores
from pipeline.evaluation.image_source import ImageSource
from pipeline.evaluation.inference import (
    Generator,
    ImageEmbedder,
    InferenceConfig,
    ITMScorer,
    TextEmbedder,
    resolve_gpus,
    run_pass,
)
from pipeline.evaluation.paper import table
from pipeline.evaluation.retrieval import itc_similarity, report_metrics, rerank, top_k_pairs
from pipeline.evaluation.text import pre_caption
from pipeline.evaluation.vqa import exact_match_accuracy, vqa_accuracy
from pipeline.storage import StorageConfig

TASKS = ("retrieval", "captioning", "vqa")


@dataclass
class RetrievalConfig:
    k_test: int = 128  # ITC candidates per query re-ranked by ITM (LAVIS: 128 for COCO and Flickr30K)
    text_max_len: int = 35  # Q-Former tokens per caption (LAVIS compute_sim_matrix)
    clean_text: bool = True  # LAVIS blip_caption on the captions (lowercase, some punctuation out, 50 words)


@dataclass
class CaptionConfig:
    prompt: str | None = "a photo of"  # paper Table 3 (COCO-fine-tuned); empty for a model pre-trained without one
    num_beams: int = 5
    max_new_tokens: int = 30
    min_new_tokens: int = 8  # LAVIS caption_coco eval: min_len 8
    length_penalty: float = 1.0
    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    spice: str = "auto"  # auto (skipped with a note when its Stanford models are absent) | require | off


@dataclass
class VQAConfig:
    prompt: str | None = None  # empty = the paper's: "Question: {} Answer:" (OPT), "Question: {} Short answer:" (Flan-T5)
    num_beams: int = 5
    max_new_tokens: int = 10
    min_new_tokens: int = 1
    length_penalty: float = -1.0  # LAVIS predict_answers / paper: favours short answers


@dataclass
class EvalConfig:
    data: str = "???"  # the annotation file (VQAv2 / OK-VQA: the annotations) or data-prep shards
    format: str = "auto"  # auto | karpathy | coco_captions | vqav2 | okvqa | gqa | shards (see annotations.py)
    questions: str | None = None  # VQAv2 / OK-VQA questions file
    images: str | None = None  # folder / Parquet / WebDataset of the images; default: beside the annotations
    image_template: str = ""  # VQA/GQA image names, e.g. "COCO_{data_subtype}_{image_id:012d}.jpg"
    benchmark: str = "auto"  # the paper table to print beside: coco | flickr30k | nocaps | vqav2 | okvqa | gqa | none
    tasks: list[str] = field(default_factory=list)  # [] = every task the data and the models allow
    retrieval_model: str | None = None  # stage-1 checkpoint or Blip2ForImageTextRetrieval folder
    caption_model: str | None = None  # stage-2 checkpoint or Blip2ForConditionalGeneration folder
    image_size: int = 0  # 0 = the model's own
    max_images: int = 0  # 0 = all (a smaller number for smoke runs)
    output: str | None = None  # results JSON (local or s3://)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    vqa: VQAConfig = field(default_factory=VQAConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


def detect_format(data: str) -> str:
    """The format of an annotation file from its structure; anything that is not JSON is taken for shards."""
    if not data.endswith(".json"):
        return "shards"
    d = json.loads(storage.read_text(data))
    if isinstance(d, list):
        return "karpathy" if d and "caption" in d[0] else "gqa"
    if "annotations" in d and d["annotations"] and "answers" in d["annotations"][0]:
        return "vqav2"
    if "images" in d and "annotations" in d:
        return "coco_captions"
    return "gqa"


def _benchmark(cfg: EvalConfig, ev: A.EvalSet) -> str:
    if cfg.benchmark != "auto":
        return cfg.benchmark
    if ev.format == "karpathy":
        return "flickr30k" if "flickr" in cfg.data.lower() else "coco"
    if ev.format == "coco_captions":
        return "nocaps" if ev.domains else "coco"
    return ev.format if ev.format in ("vqav2", "okvqa", "gqa") else "none"


def _tasks(cfg: EvalConfig, ev: A.EvalSet) -> list[str]:
    if cfg.tasks:
        bad = [t for t in cfg.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"tasks {bad}: choose from {TASKS}")
        need = {"retrieval": ("retrieval_model", bool(ev.captions)), "captioning": ("caption_model", bool(ev.captions)),
                "vqa": ("caption_model", bool(ev.questions))}
        for t in cfg.tasks:
            key, has_data = need[t]
            if not getattr(cfg, key):
                raise ValueError(f"task {t!r} needs {key}=")
            if not has_data:
                raise ValueError(f"task {t!r}: {cfg.data} (format {ev.format}) has no "
                                 f"{'questions' if t == 'vqa' else 'captions'}")
        return list(cfg.tasks)
    tasks = []
    if cfg.retrieval_model and ev.captions:
        tasks.append("retrieval")
    if cfg.caption_model and ev.captions:
        tasks.append("captioning")
    if cfg.caption_model and ev.questions:
        tasks.append("vqa")
    if not tasks:
        raise ValueError(f"nothing to evaluate: {cfg.data} has {len(ev.captions)} captioned images and "
                         f"{len(ev.questions)} questions; retrieval_model={cfg.retrieval_model}, "
                         f"caption_model={cfg.caption_model}")
    return tasks


def _storage_dict(cfg: EvalConfig) -> dict:
    return {k: getattr(cfg.storage, k) for k in ("endpoint_url", "region", "anon")}


def evaluate_retrieval(cfg: EvalConfig, ev: A.EvalSet, source: ImageSource) -> dict:
    import ray

    texts, txt2img, img2txt = ev.retrieval_texts()
    if cfg.retrieval.clean_text:
        texts = [pre_caption(t) for t in texts]
    common = {"model_uri": cfg.retrieval_model, "dtype": cfg.inference.dtype, "storage_cfg": _storage_dict(cfg)}
    cache_dtype = cfg.inference.cache_dtype
    if cache_dtype == "auto":
        cache_dtype = "float16" if resolve_gpus(cfg.inference) else "float32"
    img, img_s = run_pass({"idx": np.arange(len(ev.images)), "name": np.array(ev.images, dtype=object)}, ImageEmbedder,
                          {**common, "source": source, "image_size": cfg.image_size, "embeds_dtype": cache_dtype},
                          cfg.inference,
                          cfg.inference.batch_size, "image embedding")
    txt, txt_s = run_pass({"idx": np.arange(len(texts)), "text": np.array(texts, dtype=object)}, TextEmbedder,
                          {**common, "max_len": cfg.retrieval.text_max_len}, cfg.inference, cfg.inference.batch_size,
                          "text embedding")
    sim = itc_similarity(img["image_feats"], txt["text_feat"])
    i2t_pairs, t2i_pairs = top_k_pairs(sim, cfg.retrieval.k_test)
    pairs = np.concatenate([i2t_pairs, t2i_pairs])
    cache = {k: ray.put(v) for k, v in (("image_embeds", img["image_embeds"]), ("input_ids", txt["input_ids"]),
                                        ("attention_mask", txt["attention_mask"]))}
    itm, itm_s = run_pass({"idx": np.arange(len(pairs)), "img": pairs[:, 0], "txt": pairs[:, 1]}, ITMScorer,
                          {**common, "cache": cache}, cfg.inference, cfg.inference.pair_batch_size, "ITM re-ranking")
    n_i2t = len(i2t_pairs)  # run_pass returns rows in input order: the i2t pairs, then the t2i pairs
    scores_i2t, scores_t2i = rerank(sim, i2t_pairs, itm["itm"][:n_i2t], t2i_pairs, itm["itm"][n_i2t:])
    out = {f"retrieval_{k}": v for k, v in report_metrics(scores_i2t, scores_t2i, txt2img, img2txt).items()}
    out.update({f"retrieval_itc_{k}": v for k, v in report_metrics(sim, sim.T, txt2img, img2txt).items()})
    out.update({"retrieval_images": len(ev.images), "retrieval_texts": len(texts), "retrieval_k_test": cfg.retrieval.k_test,
                "retrieval_chance_r1": 100.0 / len(ev.images),
                "retrieval_cost": {"vit_images": int(round(img["vit_images"].sum() + itm["vit_images"].sum())),
                                   "vit_images_in_reranking": int(round(itm["vit_images"].sum())),
                                   "text_passes_embedding": len(texts),
                                   "itm_text_passes": int(itm["text_passes"].sum()),
                                   "itm_pairs_i2t": len(i2t_pairs), "itm_pairs_t2i": len(t2i_pairs)},
                "retrieval_seconds": {"image_embedding": img_s, "text_embedding": txt_s, "itm_reranking": itm_s},
                # per actor, model time only (decode + forward, no actor start-up)
                "retrieval_throughput": {"images_per_s": len(ev.images) / img["model_s"].sum(),
                                         "texts_per_s": len(texts) / txt["model_s"].sum(),
                                         "itm_pairs_per_s": len(pairs) / itm["model_s"].sum()}})
    return out


def _generate(cfg: EvalConfig, source: ImageSource, names: list[str], prompts: list[str], gen: dict, what: str):
    out, seconds = run_pass({"idx": np.arange(len(names)), "name": np.array(names, dtype=object),
                             "prompt": np.array(prompts, dtype=object)}, Generator,
                            {"model_uri": cfg.caption_model, "source": source, "image_size": cfg.image_size,
                             "dtype": cfg.inference.dtype, "storage_cfg": _storage_dict(cfg), "generate_kwargs": gen},
                            cfg.inference, cfg.inference.batch_size, what)
    return [str(t) for t in out["text"]], seconds


def evaluate_captioning(cfg: EvalConfig, ev: A.EvalSet, source: ImageSource) -> dict:
    c = cfg.caption
    gen = {"num_beams": c.num_beams, "max_new_tokens": c.max_new_tokens, "min_new_tokens": c.min_new_tokens,
           "length_penalty": c.length_penalty}
    texts, seconds = _generate(cfg, source, ev.images, [c.prompt or ""] * len(ev.images), gen, "captioning")
    generated = dict(zip(ev.images, texts))
    refs = dict(zip(ev.images, ev.captions))
    out = {f"caption_{k}": v for k, v in caption_scores(refs, generated, c.metrics, c.spice).items()}
    for domain in sorted(set(ev.domains)):  # NoCaps: each domain scored on its own (its own CIDEr IDF)
        keep = [n for n, d in zip(ev.images, ev.domains) if d == domain]
        scores = caption_scores({n: refs[n] for n in keep}, {n: generated[n] for n in keep}, c.metrics, c.spice)
        out.update({f"caption_{domain.replace('-', '_')}_{k}": v for k, v in scores.items()})
    out.update({"caption_images": len(ev.images), "caption_generated": generated, "caption_seconds": seconds,
                "examples": [{"key": n, "reference": refs[n][0], "generated": generated[n]} for n in ev.images[:8]]})
    return out


def evaluate_vqa(cfg: EvalConfig, ev: A.EvalSet, source: ImageSource, model_kind: str) -> dict:
    from pipeline.models.stage2 import VQA_PROMPTS

    v = cfg.vqa
    template = v.prompt or VQA_PROMPTS[model_kind]
    gen = {"num_beams": v.num_beams, "max_new_tokens": v.max_new_tokens, "min_new_tokens": v.min_new_tokens,
           "length_penalty": v.length_penalty}
    answers, seconds = _generate(cfg, source, [q.image for q in ev.questions],
                                 [template.format(q.question) for q in ev.questions], gen, "VQA")
    if ev.answer_scoring == "vqa":
        acc = vqa_accuracy(answers, [q.answers for q in ev.questions])
    else:
        acc = exact_match_accuracy(answers, [q.answers[0] for q in ev.questions])
    return {"vqa_accuracy": acc, "vqa_questions": len(ev.questions), "vqa_scoring": ev.answer_scoring,
            "vqa_prompt": template, "vqa_seconds": seconds,
            "vqa_answers": {q.question_id: a for q, a in zip(ev.questions, answers)}}


def _model_kind(uri: str) -> str:
    """decoder | encoder_decoder of a stage-2 model, without loading it (for the VQA prompt)."""
    from pipeline.checkpoint import is_complete
    from pipeline.models.loading import resolve

    if storage.exists(storage.join(uri, "COMPLETE")) and is_complete(uri):
        from omegaconf import OmegaConf

        llm = OmegaConf.create(storage.read_text(storage.join(uri, "model.yaml"))).model.llm.name_or_path
        path = resolve(llm)
    else:
        path = resolve(uri)
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    c = getattr(c, "text_config", None) or c
    return "encoder_decoder" if c.is_encoder_decoder else "decoder"


def evaluate(cfg: EvalConfig, extra_caption_metrics: dict[str, Callable[[dict[str, str]], float]] | None = None) -> dict:
    """Evaluate and return the results (also written to ``cfg.output`` and printed beside the paper's numbers).

    ``extra_caption_metrics``: name -> fn({image name: generated caption}) -> float, for metrics that only a
    caller knows (the demo's attribute accuracy on its synthetic data); stored as ``caption_<name>``.
    """
    import ray

    storage.set_default(cfg.storage)
    fmt = detect_format(cfg.data) if cfg.format == "auto" else cfg.format
    ev = A.limit(A.read(fmt, cfg.data, cfg.questions, cfg.images, cfg.image_template), cfg.max_images)
    tasks = _tasks(cfg, ev)
    benchmark = _benchmark(cfg, ev)
    source = ImageSource(ev.image_root)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    t0 = time.perf_counter()
    results: dict = {"data": cfg.data, "format": fmt, "benchmark": benchmark, "tasks": tasks,
                     "num_images": len(ev.images)}
    if "retrieval" in tasks:
        results.update(evaluate_retrieval(cfg, ev, source))
    if "captioning" in tasks:
        results.update(evaluate_captioning(cfg, ev, source))
        for name, fn in (extra_caption_metrics or {}).items():
            results[f"caption_{name}"] = float(fn(results["caption_generated"]))
    if "vqa" in tasks:
        results.update(evaluate_vqa(cfg, ev, source, _model_kind(cfg.caption_model)))
    results["seconds"] = time.perf_counter() - t0
    results["paper_table"] = table(results, benchmark)
    print(results["paper_table"], flush=True)
    if cfg.output:
        storage.write_text(cfg.output, json.dumps(results, indent=2))
    return results
