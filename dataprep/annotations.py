"""Standard fine-tuning annotations -> the training records data prep writes (``pipeline.records.OUTPUT_SCHEMA``
Parquet under ``<output>/data/``), so fine-tuning reads them exactly as it reads data-prep output.

* COCO Karpathy captions / retrieval (LAVIS ``coco_karpathy_{train,val,test}.json``: entries with ``image`` and
  ``caption`` (a string, or a list of captions), or Karpathy's own ``dataset_coco.json``): one record per image,
  every caption cleaned as LAVIS ``blip_caption`` does and kept; training samples one per step.
* VQAv2 (``v2_OpenEnded_mscoco_<split>_questions.json`` + ``v2_mscoco_<split>_annotations.json``): one record per
  question; the question (LAVIS ``blip_question`` cleaning) goes in ``meta`` as ``{"question": ...}``, the ten
  human answers are ``kept_captions`` (training samples one per step, so an answer is drawn as often as annotators
  gave it).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import OrderedDict

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dataprep.validate import clean_caption
from pipeline import storage
from pipeline.records import OUTPUT_SCHEMA


def clean_question(text: str, max_words: int = 50) -> str:
    """LAVIS ``blip_question``: lowercase, drop .!"()*#:;~, strip trailing spaces, at most ``max_words`` words."""
    text = re.sub(r"([.!\"()*#:;~])", "", text.lower()).rstrip(" ")
    return " ".join(text.split(" ")[:max_words])


def _image_bytes(path: str, shorter_side: int) -> tuple[bytes, int, int, int, int]:
    """JPEG bytes (re-encoded only when resized), width, height, original width, original height."""
    data = storage.read_bytes(path)
    img = Image.open(io.BytesIO(data))
    ow, oh = img.size
    if shorter_side and min(ow, oh) > shorter_side:
        s = shorter_side / min(ow, oh)
        img = img.convert("RGB").resize((max(1, round(ow * s)), max(1, round(oh * s))), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
    return data, img.size[0], img.size[1], ow, oh


def coco_karpathy_groups(annotation: str, max_words: int = 50) -> OrderedDict[str, list[str]]:
    """{image path relative to the image root: its cleaned captions}, in file order."""
    raw = json.loads(storage.read_text(annotation))
    groups: OrderedDict[str, list[str]] = OrderedDict()
    if isinstance(raw, dict) and "images" in raw:  # Karpathy's dataset_coco.json
        for im in raw["images"]:
            groups.setdefault(os.path.join(im["filepath"], im["filename"]), []).extend(
                clean_caption(s["raw"], max_words) for s in im["sentences"])
        return groups
    if not isinstance(raw, list) or (raw and not {"image", "caption"} <= set(raw[0])):
        raise ValueError(f"{annotation}: expected LAVIS coco_karpathy_*.json (a list of {{image, caption}}) or "
                         "Karpathy's dataset_coco.json ({images: [...]})")
    for e in raw:
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        groups.setdefault(e["image"], []).extend(clean_caption(c, max_words) for c in caps)
    return groups


def vqav2_items(questions: str, annotations: str | None) -> list[dict]:
    """[{question_id, image (relative path), question, answers}] from the VQAv2 questions (+ annotations) files."""
    q = json.loads(storage.read_text(questions))
    subtype = q.get("data_subtype")
    if not subtype:
        raise ValueError(f"{questions}: no data_subtype (e.g. train2014): is it a VQAv2 questions file?")
    answers = {}
    if annotations:
        for a in json.loads(storage.read_text(annotations))["annotations"]:
            answers[a["question_id"]] = [x["answer"] for x in a["answers"]]
    items = []
    for e in q["questions"]:
        if annotations and e["question_id"] not in answers:
            raise KeyError(f"{annotations}: no annotation for question_id {e['question_id']}")
        items.append({"question_id": e["question_id"], "image_id": e["image_id"],
                      "image": f"{subtype}/COCO_{subtype}_{e['image_id']:012d}.jpg",
                      "question": clean_question(e["question"]), "answers": answers.get(e["question_id"], [])})
    return items


def _record(key: str, path: str, texts: list[str], meta: dict, source: str, offset: int, shorter_side: int) -> dict:
    data, w, h, ow, oh = _image_bytes(path, shorter_side)
    return {"key": key, "jpg": data, "width": w, "height": h, "web_caption": texts[0] if texts else "",
            "synthetic_captions": [], "candidate_scores": [], "kept_captions": texts, "web_caption_kept": True,
            "source_shard": source, "offset": offset, "orig_width": ow, "orig_height": oh, "meta": json.dumps(meta)}


def _write(records, output: str, shard_size: int) -> int:
    n, shard, buf = 0, 0, []

    def flush():
        nonlocal shard, buf
        if buf:
            out = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(buf, schema=OUTPUT_SCHEMA), out)
            storage.write_bytes(storage.join(output, "data", f"{shard:05d}.parquet"), out.getvalue())
            shard, buf = shard + 1, []

    for r in records:
        buf.append(r)
        n += 1
        if len(buf) >= shard_size:
            flush()
    flush()
    return n


def convert_coco_karpathy(annotation: str, image_root: str, output: str, shard_size: int = 1000,
                          shorter_side: int = 0) -> int:
    groups = coco_karpathy_groups(annotation)
    recs = (_record(os.path.splitext(os.path.basename(img))[0], storage.join(image_root, img), caps,
                    {"image": img}, annotation, i, shorter_side) for i, (img, caps) in enumerate(groups.items()))
    return _write(recs, output, shard_size)


def convert_vqav2(questions: str, annotations: str | None, image_root: str, output: str, shard_size: int = 1000,
                  shorter_side: int = 0) -> int:
    items = vqav2_items(questions, annotations)
    recs = (_record(str(it["question_id"]), storage.join(image_root, it["image"]), it["answers"],
                    {"question": it["question"], "image_id": it["image_id"], "image": it["image"]}, questions, i,
                    shorter_side) for i, it in enumerate(items))
    return _write(recs, output, shard_size)
