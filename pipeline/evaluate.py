"""Evaluation metrics: BLIP-2 retrieval (ITC top-k re-ranked by ITM), captioning (BLEU-4, CIDEr from
pycocoevalcap), zero-shot VQA (VQAv2-normalised exact match), and the synthetic data's attribute accuracy."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~'.:]")


def normalize_answer(ans: str) -> str:
    """VQAv2 answer normalisation: lowercase, punctuation out, number words to digits, articles dropped."""
    ans = _PUNCT.sub(" ", ans.lower().replace("\n", " ").replace("\t", " "))
    words = [_NUMBERS.get(w, w) for w in ans.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(predictions: list[str], answers: list[list[str]]) -> float:
    """Fraction of predictions that equal (after normalisation) one of the reference answers."""
    hits = [normalize_answer(p) in {normalize_answer(a) for a in refs} for p, refs in zip(predictions, answers)]
    return float(np.mean(hits)) if hits else 0.0


def _tokenize(text: str) -> str:
    # PTB-style tokenisation as the COCO toolkit does it (without its Java tokenizer): lowercase, no punctuation.
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def caption_scores(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """BLEU-4 and CIDEr(-D) from pycocoevalcap over {id: [reference captions]} and {id: generated caption}."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {k: [_tokenize(r) for r in v] for k, v in references.items()}
    res = {k: [_tokenize(candidates[k])] for k in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def recall_at_k(scores_i2t: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """TR@k (image -> any of its texts) and IR@k (text -> its image) from an [images, texts] score matrix."""
    n_img = scores_i2t.shape[0]
    tr_ranks = []
    for i in range(n_img):
        order = np.argsort(-scores_i2t[i], kind="stable")
        tr_ranks.append(int(np.where(text_image[order] == i)[0].min()))
    ir_ranks = []
    for t in range(scores_i2t.shape[1]):
        order = np.argsort(-scores_i2t[:, t], kind="stable")
        ir_ranks.append(int(np.where(order == text_image[t])[0][0]))
    out = {}
    for k in ks:
        out[f"tr{k}"] = float(np.mean(np.array(tr_ranks) < k))
        out[f"ir{k}"] = float(np.mean(np.array(ir_ranks) < k))
    return out


def rerank(itc: np.ndarray, itm_score: Callable[[list[int], list[int]], np.ndarray], k: int) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """BLIP-2 retrieval: the top-k ITC candidates of each query re-scored with ITM logit + ITC similarity.

    Returns (i2t, t2i) score matrices where non-candidates keep -inf. ``itm_score(images, texts)`` scores pairs.
    """
    n_img, n_txt = itc.shape
    i2t = np.full_like(itc, -np.inf)
    t2i = np.full_like(itc, -np.inf)
    k_t, k_i = min(k, n_txt), min(k, n_img)
    imgs, txts = [], []
    for i in range(n_img):
        top = np.argsort(-itc[i], kind="stable")[:k_t]
        imgs += [i] * len(top)
        txts += list(top)
    s = itm_score(imgs, txts)
    i2t[imgs, txts] = s + itc[imgs, txts]
    imgs, txts = [], []
    for t in range(n_txt):
        top = np.argsort(-itc[:, t], kind="stable")[:k_i]
        imgs += list(top)
        txts += [t] * len(top)
    s = itm_score(imgs, txts)
    t2i[imgs, txts] = s + itc[imgs, txts]
    return i2t, t2i


def retrieval_metrics(i2t: np.ndarray, t2i: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    tr = recall_at_k(i2t, text_image, ks)
    ir = recall_at_k(t2i, text_image, ks)
    return {**{f"tr{k}": tr[f"tr{k}"] for k in ks}, **{f"ir{k}": ir[f"ir{k}"] for k in ks}}
