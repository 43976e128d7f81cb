"""Tiny benchmark folders in each official file layout: a few synthetic images and the real JSON schemas.

Layouts follow the public files: LAVIS's ``coco_karpathy_test.json`` / ``flickr30k_test.json`` ({image, caption:
[5]}), NoCaps' ``nocaps_val_4500_captions.json`` (COCO style, ``domain`` per image, 10 captions), the VQA API's
``v2_OpenEnded_mscoco_val2014_questions.json`` + ``v2_mscoco_val2014_annotations.json`` (10 answers), OK-VQA's
``OpenEnded_mscoco_val2014_questions.json`` + ``mscoco_val2014_annotations.json`` and GQA's
``testdev_balanced_questions.json``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40),
           "white": (240, 240, 240), "black": (15, 15, 15), "purple": (140, 40, 160), "orange": (240, 140, 20)}
SHAPES = ("circle", "square")


def _scene(i: int) -> tuple[str, str, bytes]:
    colour = list(COLOURS)[i % len(COLOURS)]
    shape = SHAPES[(i // len(COLOURS)) % 2]
    img = Image.new("RGB", (48, 40), (128, 128, 128))
    d = ImageDraw.Draw(img)
    box = (8 + i % 5, 6, 36 + i % 5, 34)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return colour, shape, buf.getvalue()


def _captions(colour: str, shape: str, n: int) -> list[str]:
    forms = [f"A {colour} {shape} on a grey background.", f"The {shape} is {colour}!", f"a {colour} {shape}",
             f"{colour.capitalize()} {shape}, centred; grey around it.", f"There's a {shape} (it's {colour}).",
             f"A grey image with a {colour} {shape}", f"one {colour} {shape}", f"A {shape}: {colour}.",
             f"Picture of a {colour} {shape}...", f"A {colour}-coloured {shape}"]
    return forms[:n]


def _write(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(data, bytes):
        with open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "w") as f:
            json.dump(data, f)


def write_benchmarks(root: str, n: int = 6) -> dict[str, str]:
    """Write every layout under ``root``; returns the paths a test passes to the readers/job."""
    scenes = [_scene(i) for i in range(n)]
    coco_ids = [391895 + 17 * i for i in range(n)]
    p = {}
    # COCO Karpathy test (LAVIS layout): image paths relative to coco/images
    for cid, (_, _, jpg) in zip(coco_ids, scenes):
        _write(f"{root}/coco/images/val2014/COCO_val2014_{cid:012d}.jpg", jpg)
    p["coco_karpathy"] = f"{root}/coco/annotations/coco_karpathy_test.json"
    _write(p["coco_karpathy"], [{"image": f"val2014/COCO_val2014_{cid:012d}.jpg", "caption": _captions(c, s, 5)}
                                for cid, (c, s, _) in zip(coco_ids, scenes)])
    p["coco_images"] = f"{root}/coco/images"
    # Flickr30K test (LAVIS layout), the annotation file beside flickr30k-images/
    flickr_ids = [1000092795 + i for i in range(n)]
    for fid, (_, _, jpg) in zip(flickr_ids, scenes):
        _write(f"{root}/flickr30k/flickr30k-images/{fid}.jpg", jpg)
    p["flickr"] = f"{root}/flickr30k/flickr30k_test.json"
    _write(p["flickr"], [{"image": f"flickr30k-images/{fid}.jpg", "caption": _captions(c, s, 5)}
                         for fid, (c, s, _) in zip(flickr_ids, scenes)])
    # The same Flickr images packed: Parquet (name + jpg columns) and a WebDataset tar (KEY.jpg)
    import pyarrow as pa
    import pyarrow.parquet as pq

    p["flickr_parquet"] = f"{root}/packed/flickr_images.parquet"
    os.makedirs(f"{root}/packed", exist_ok=True)
    pq.write_table(pa.table({"name": [f"flickr30k-images/{fid}.jpg" for fid in flickr_ids],
                             "jpg": [s[2] for s in scenes]}), p["flickr_parquet"])
    p["flickr_tar"] = f"{root}/packed/flickr_images.tar"
    with tarfile.open(p["flickr_tar"], "w") as tar:
        for fid, (_, _, jpg) in zip(flickr_ids, scenes):
            info = tarfile.TarInfo(f"{fid}.jpg")
            info.size = len(jpg)
            tar.addfile(info, io.BytesIO(jpg))
    # NoCaps val (COCO style with domains), images beside the file
    domains = ["in-domain", "near-domain", "out-domain"]
    oid = [f"{0x0013ea2087020901 + i:016x}" for i in range(n)]
    p["nocaps"] = f"{root}/nocaps/nocaps_val_4500_captions.json"
    for o, (_, _, jpg) in zip(oid, scenes):
        _write(f"{root}/nocaps/{o}.jpg", jpg)
    _write(p["nocaps"], {
        "licenses": [], "info": {"description": "nocaps validation", "version": "0.1"},
        "images": [{"id": i, "file_name": f"{o}.jpg", "open_images_id": o, "height": 40, "width": 48,
                    "coco_url": f"https://s3.amazonaws.com/nocaps/val/{o}.jpg", "license": 0,
                    "domain": domains[i % 3]} for i, o in enumerate(oid)],
        "annotations": [{"image_id": i, "caption": cap, "id": i * 10 + j}
                        for i, (c, s, _) in enumerate(scenes) for j, cap in enumerate(_captions(c, s, 10))]})
    # VQAv2 val: questions + annotations with 10 answers; images named by the VQA API's rule
    qs, anns = [], []
    for cid, (c, s, _) in zip(coco_ids, scenes):
        for k, (q, a, alt, qt, at) in enumerate((("What color is the shape?", c, "grey", "what color is the", "other"),
                                                 (f"Is there a {s}?", "yes", "no", "is there a", "yes/no"),
                                                 ("How many shapes are there?", "1", "one", "how many", "number"))):
            qid = cid * 1000 + k
            qs.append({"image_id": cid, "question": q, "question_id": qid})
            answers = [a] * 7 + [alt] * 2 + [a.capitalize() + "."]
            anns.append({"question_type": qt, "multiple_choice_answer": a, "image_id": cid, "answer_type": at,
                         "question_id": qid, "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": j + 1}
                                                         for j, x in enumerate(answers)]})
    info = {"description": "This is v2.0 of the VQA dataset.", "version": "2.0", "year": 2017}
    lic = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}
    p["vqav2_questions"] = f"{root}/vqav2/v2_OpenEnded_mscoco_val2014_questions.json"
    p["vqav2_annotations"] = f"{root}/vqav2/v2_mscoco_val2014_annotations.json"
    _write(p["vqav2_questions"], {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": lic,
                                  "data_subtype": "val2014", "questions": qs})
    _write(p["vqav2_annotations"], {"info": info, "license": lic, "data_subtype": "val2014", "annotations": anns})
    p["coco_val2014"] = f"{root}/coco/images/val2014"
    # OK-VQA: the VQAv2 format (5 answers given twice each, raw_answer kept)
    p["okvqa_questions"] = f"{root}/okvqa/OpenEnded_mscoco_val2014_questions.json"
    p["okvqa_annotations"] = f"{root}/okvqa/mscoco_val2014_annotations.json"
    ok_q = [{"image_id": cid, "question": f"What is the {s} made of?", "question_id": 2971475 + i}
            for i, (cid, (c, s, _)) in enumerate(zip(coco_ids, scenes))]
    ok_a = [{"image_id": q["image_id"], "answer_type": "other", "question_type": "eight", "question_id": q["question_id"],
             "confidence": 3, "answers": [{"answer_id": j + 1, "raw_answer": r, "answer_confidence": "yes", "answer": r}
                                          for j, r in enumerate(["paper", "paper", "plastic", "plastic", "paint",
                                                                 "paint", "paper", "paper", "ink", "ink"])]}
            for q in ok_q]
    _write(p["okvqa_questions"], {"license": lic, "data_subtype": "val2014", "task_type": "Open-Ended",
                                  "questions": ok_q, "info": info, "data_type": "mscoco"})
    _write(p["okvqa_annotations"], {"license": lic, "data_subtype": "val2014", "annotations": ok_a, "info": info,
                                    "data_type": "mscoco"})
    # GQA testdev balanced questions (official dict layout), images/{imageId}.jpg beside it
    p["gqa"] = f"{root}/gqa/testdev_balanced_questions.json"
    gq = {}
    for i, (c, s, jpg) in enumerate(scenes):
        image_id = f"n{161313 + i}"
        _write(f"{root}/gqa/images/{image_id}.jpg", jpg)
        gq[f"{20968379 + i}"] = {
            "semantic": [{"operation": "select", "dependencies": [], "argument": f"{s} (1)"}], "entailed": [],
            "equivalent": [f"{20968379 + i}"], "question": f"What color is the {s}?", "imageId": image_id,
            "isBalanced": True, "groups": {"global": None, "local": "10q-color"}, "answer": c,
            "semanticStr": f"select: {s} (1)->query: color [0]", "annotations": {"answer": {}, "question": {},
                                                                                 "fullAnswer": {}},
            "types": {"detailed": "objColor", "semantic": "attr", "structural": "query"},
            "fullAnswer": f"The {s} is {c}."}
    _write(p["gqa"], gq)
    p["gqa_images"] = f"{root}/gqa/images"
    return p
