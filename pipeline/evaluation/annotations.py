"""Readers for the benchmarks' own annotation files (local or s3://), each turned into an :class:`EvalSet`.

Formats (``format=``):
- ``karpathy``: COCO Karpathy test / Flickr30K test in the LAVIS/BLIP layout, a JSON list of
  ``{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": [5 captions]}`` (captions may also come one per
  entry as a string; they are grouped by image);
- ``coco_captions``: COCO-style caption files, ``{"images": [{"id", "file_name", "domain"?}], "annotations":
  [{"image_id", "caption"}]}``: NoCaps val (``domain`` in-domain / near-domain / out-domain) and COCO's
  ``captions_val2014.json`` / LAVIS's ``coco_karpathy_test_gt.json``;
- ``vqav2`` / ``okvqa``: the VQA API's questions file (``questions=``) + annotations file (``data=``), 10 answers
  per question; images named ``COCO_{data_subtype}_{image_id:012d}.jpg`` unless ``image_template`` says otherwise;
- ``gqa``: GQA balanced questions (``testdev_balanced_questions.json``: ``{qid: {"imageId", "question",
  "answer", ...}}``) or LAVIS's list layout (``[{"image", "question", "answer", "question_id"}]``);
- ``shards``: data-prep Parquet / WebDataset shards (images inside; captions; ``qa`` in the JSON metadata).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

from pipeline import storage

FORMATS = ("karpathy", "coco_captions", "vqav2", "okvqa", "gqa", "shards")


@dataclass
class Question:
    question_id: str
    image: str
    question: str
    answers: list[str]  # the 10 human answers (VQAv2, OK-VQA) or the one answer (GQA, shards)


@dataclass
class EvalSet:
    format: str
    images: list[str] = field(default_factory=list)  # image names, unique, in file order
    captions: list[list[str]] = field(default_factory=list)  # per image: references / retrieval texts
    domains: list[str] = field(default_factory=list)  # per image (NoCaps), else empty
    questions: list[Question] = field(default_factory=list)
    image_root: str = ""  # where the names resolve: a folder, a Parquet file/folder, WebDataset tars
    answer_scoring: str = "vqa"  # "vqa": official 10-answer accuracy; "exact": normalised exact match (GQA)

    def retrieval_texts(self) -> tuple[list[str], list[int], list[list[int]]]:
        """(texts, txt2img, img2txt) in LAVIS's RetrievalEvalDataset order: image by image, caption by caption."""
        texts, txt2img, img2txt = [], [], []
        for i, caps in enumerate(self.captions):
            img2txt.append(list(range(len(texts), len(texts) + len(caps))))
            texts += caps
            txt2img += [i] * len(caps)
        return texts, txt2img, img2txt


def _json(uri: str):
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {uri!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {uri!r} is not valid JSON: {e}") from None


def _need(obj: dict, keys: tuple[str, ...], uri: str, what: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{uri}: {what} lacks {missing} (got keys {sorted(obj)[:8]}); is this the right format=?")


def read_karpathy(uri: str) -> EvalSet:
    data = _json(uri)
    if not isinstance(data, list):
        raise ValueError(f"{uri}: the karpathy layout is a JSON list of {{image, caption}}, got {type(data).__name__}")
    by_image: dict[str, list[str]] = {}
    for i, ann in enumerate(data):
        _need(ann, ("image", "caption"), uri, f"entry {i}")
        caps = ann["caption"] if isinstance(ann["caption"], list) else [ann["caption"]]
        by_image.setdefault(ann["image"], []).extend(str(c) for c in caps)
    return EvalSet("karpathy", images=list(by_image), captions=list(by_image.values()))


def read_coco_captions(uri: str) -> EvalSet:
    data = _json(uri)
    _need(data, ("images", "annotations"), uri, "the file")
    caps: dict = {}
    for a in data["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    images = [im for im in data["images"] if im["id"] in caps]
    if not images:
        raise ValueError(f"{uri}: no image has a caption annotation (NoCaps test has none: use val)")
    return EvalSet("coco_captions", images=[im["file_name"] for im in images], captions=[caps[im["id"]] for im in images],
                   domains=[im["domain"] for im in images] if all("domain" in im for im in images) else [])


def read_vqa(questions_uri: str, annotations_uri: str, image_template: str = "") -> EvalSet:
    qs = _json(questions_uri)
    anns = _json(annotations_uri)
    _need(qs, ("questions",), questions_uri, "the questions file")
    _need(anns, ("annotations",), annotations_uri, "the annotations file")
    template = image_template or "COCO_{data_subtype}_{image_id:012d}.jpg"
    subtype = qs.get("data_subtype", anns.get("data_subtype", "val2014"))
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in anns["annotations"]}
    out, images = [], {}
    for q in qs["questions"]:
        if q["question_id"] not in answers:
            raise ValueError(f"{annotations_uri}: no answers for question {q['question_id']} of {questions_uri}")
        name = template.format(data_subtype=subtype, image_id=q["image_id"])
        images.setdefault(name, None)
        out.append(Question(str(q["question_id"]), name, q["question"], answers[q["question_id"]]))
    return EvalSet("vqa", images=list(images), questions=out, answer_scoring="vqa")


def read_gqa(uri: str, image_template: str = "") -> EvalSet:
    data = _json(uri)
    template = image_template or "{image_id}.jpg"
    out = []
    if isinstance(data, dict):  # the official layout: {question id: {...}}
        for qid, q in data.items():
            _need(q, ("imageId", "question", "answer"), uri, f"question {qid}")
            out.append(Question(str(qid), template.format(image_id=q["imageId"]), q["question"], [q["answer"]]))
    else:  # LAVIS's converted list
        for i, q in enumerate(data):
            _need(q, ("image", "question", "answer"), uri, f"entry {i}")
            out.append(Question(str(q.get("question_id", i)), q["image"], q["question"], [q["answer"]]))
    return EvalSet("gqa", images=list(dict.fromkeys(q.image for q in out)), questions=out, answer_scoring="exact")


def read_shards(uri: str) -> EvalSet:
    """Data-prep output (Parquet) or WebDataset tars: images inside, captions, and ``qa`` in the JSON metadata."""
    import pyarrow.parquet as pq

    from pipeline.manifest import list_data_files
    from pipeline.records import read_tar

    ev = EvalSet("shards", image_root=uri, answer_scoring="exact")
    for f in list_data_files(uri):
        if f.endswith(".parquet"):
            rows = [(r["key"], _meta(r.get("meta")), list(r.get("kept_captions") or []))
                    for r in pq.read_table(io.BytesIO(storage.read_bytes(f)), columns=None).to_pylist()]
        else:
            rows = [(r["key"], _meta(r["meta"]), [(r["caption"] or b"").decode("utf-8", "replace").strip()])
                    for r in read_tar(f)]
        for key, meta, caps in rows:
            ev.images.append(key)
            ev.captions.append([meta["clean_caption"]] if meta.get("clean_caption") else [c for c in caps if c])
            for j, qa in enumerate(meta.get("qa") or []):
                ev.questions.append(Question(f"{key}-{j}", key, qa["question"], [qa["answer"]]))
    return ev


def _meta(value) -> dict:
    return json.loads(value) if isinstance(value, str) and value else {}


def read(fmt: str, data: str, questions: str | None = None, images: str | None = None,
         image_template: str = "") -> EvalSet:
    """The :class:`EvalSet` of ``data`` in format ``fmt``; images resolve under ``images`` (default: beside it)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {FORMATS}")
    if fmt in ("vqav2", "okvqa") and not questions:
        raise ValueError(f"format {fmt!r} needs questions= (the questions file) beside data= (the annotations)")
    if fmt == "karpathy":
        ev = read_karpathy(data)
    elif fmt == "coco_captions":
        ev = read_coco_captions(data)
    elif fmt in ("vqav2", "okvqa"):
        ev = read_vqa(questions, data, image_template)
        ev.format = fmt
    elif fmt == "gqa":
        ev = read_gqa(data, image_template)
    else:
        ev = read_shards(data)
    if images:
        ev.image_root = images
    elif not ev.image_root:
        ev.image_root = data.rsplit("/", 1)[0] if "/" in data else os.path.dirname(os.path.abspath(data))
    return ev


def limit(ev: EvalSet, max_images: int) -> EvalSet:
    """The first ``max_images`` images and their captions/questions (for smoke runs); 0 keeps everything."""
    if not max_images or max_images >= len(ev.images):
        return ev
    keep = set(ev.images[:max_images])
    return EvalSet(ev.format, ev.images[:max_images], ev.captions[:max_images], ev.domains[:max_images],
                   [q for q in ev.questions if q.image in keep], ev.image_root, ev.answer_scoring)
