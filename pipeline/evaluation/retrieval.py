"""Image-text retrieval as BLIP-2 evaluates it (LAVIS ``compute_sim_matrix`` + ``_report_metrics``).

1. ITC: the similarity of an image and a text is the max over the image's query embeddings of their dot product with
   the text embedding, over all images x all texts.
2. For each image, its top-k_test texts by ITC, and for each text its top-k_test images, are re-scored with
   ITM logit("match") + ITC similarity; everything outside the candidates scores -inf.
3. TR@k: an image counts when any of its texts ranks in the top k; IR@k: a text counts when its image does.
   Percentages, with their means, as the paper reports them.
"""

from __future__ import annotations

import numpy as np
import torch


def itc_similarity(image_feats: np.ndarray, text_feats: np.ndarray, chunk: int = 256) -> np.ndarray:
    """[images, queries, dim] x [texts, dim] -> [images, texts]: max over queries (chunked over images)."""
    txt = torch.from_numpy(np.ascontiguousarray(text_feats, dtype=np.float32))
    out = np.empty((image_feats.shape[0], text_feats.shape[0]), dtype=np.float32)
    for s in range(0, image_feats.shape[0], chunk):
        img = torch.from_numpy(np.ascontiguousarray(image_feats[s:s + chunk], dtype=np.float32))
        out[s:s + chunk] = torch.einsum("iqe,te->itq", img, txt).amax(-1).numpy()
    return out


def top_k_pairs(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(i2t pairs, t2i pairs), each an [n, 2] array of (image, text): every image's top-k texts by ITC, then every
    text's top-k images. Image-major / text-major order keeps one image's (or text's) pairs together."""
    n_img, n_txt = sim.shape
    k_t, k_i = min(k, n_txt), min(k, n_img)
    top_t = np.argsort(-sim, axis=1, kind="stable")[:, :k_t]
    i2t = np.stack([np.repeat(np.arange(n_img), k_t), top_t.reshape(-1)], 1)
    top_i = np.argsort(-sim.T, axis=1, kind="stable")[:, :k_i]
    t2i = np.stack([top_i.reshape(-1), np.repeat(np.arange(n_txt), k_i)], 1)
    return i2t, t2i


def rerank(sim: np.ndarray, i2t_pairs: np.ndarray, i2t_itm: np.ndarray, t2i_pairs: np.ndarray,
           t2i_itm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score matrices [images, texts] (i2t) and [texts, images] (t2i): ITM logit + ITC on the candidates, -inf
    elsewhere (LAVIS fills -100; any value below every candidate ranks the same). float32, as LAVIS's matrices."""
    i2t = np.full(sim.shape, -np.inf, dtype=np.float32)
    i2t[i2t_pairs[:, 0], i2t_pairs[:, 1]] = i2t_itm + sim[i2t_pairs[:, 0], i2t_pairs[:, 1]]
    t2i = np.full(sim.T.shape, -np.inf, dtype=np.float32)
    t2i[t2i_pairs[:, 1], t2i_pairs[:, 0]] = t2i_itm + sim[t2i_pairs[:, 0], t2i_pairs[:, 1]]
    return i2t, t2i


def report_metrics(scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img, img2txt) -> dict[str, float]:
    """TR/IR@1/5/10, their means and r_mean, in percent. ``scores_t2i`` is [texts, images]. Ranks come from
    ``argsort(score)[::-1]``, as in LAVIS, so ties order the same way."""
    tr_ranks = np.empty(scores_i2t.shape[0])
    for i, score in enumerate(scores_i2t):
        order = np.argsort(score)[::-1]
        tr_ranks[i] = min(np.where(order == t)[0][0] for t in img2txt[i])
    ir_ranks = np.empty(scores_t2i.shape[0])
    for t, score in enumerate(scores_t2i):
        ir_ranks[t] = np.where(np.argsort(score)[::-1] == txt2img[t])[0][0]
    out = {}
    for name, ranks in (("tr", tr_ranks), ("ir", ir_ranks)):
        for k in (1, 5, 10):
            out[f"{name}{k}"] = 100.0 * float(np.sum(ranks < k)) / len(ranks)
        out[f"{name}_mean"] = (out[f"{name}1"] + out[f"{name}5"] + out[f"{name}10"]) / 3
    out["r_mean"] = (out["tr_mean"] + out["ir_mean"]) / 2
    return out
