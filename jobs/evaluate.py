"""Evaluate a checkpoint or an exported folder: retrieval (ITC top-k re-ranked by ITM), captioning (BLEU-4,
CIDEr) and zero-shot VQA, with the per-image model work as Ray Data batch inference.

    python jobs/evaluate.py retrieval_model=URI caption_model=URI data=URI [output=results.json] [key=value ...]

URIs: a checkpoint from jobs/stage1.py / stage2.py, or a folder exported to Blip2ForImageTextRetrieval /
Blip2ForConditionalGeneration (local, s3:// or hub id). data: data-prep Parquet or WebDataset shards whose
JSON may carry `qa` (VQA) as demo/synthetic.py writes them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.storage import StorageConfig  # noqa: E402


@dataclass
class EvalConfig:
    data: str = "???"
    retrieval_model: str | None = None
    caption_model: str | None = None
    output: str | None = None
    image_size: int = 224
    k_test: int = 128  # ITC candidates re-ranked by ITM (reference k_test)
    num_beams: int = 5  # reference captioning / VQA settings
    max_new_tokens: int = 30
    vqa_max_new_tokens: int = 10
    batch_size: int = 32
    max_samples: int = 0  # 0 = all
    storage: StorageConfig = field(default_factory=StorageConfig)


def load_any(uri: str, stage: int):
    """A model from a checkpoint (COMPLETE marker) or an exported transformers folder."""
    from pipeline.checkpoint import is_complete
    from pipeline.models.export import stage1_from_hf, stage2_from_hf
    from pipeline.stages import load_model

    if storage.exists(storage.join(uri, "COMPLETE")) and is_complete(uri):
        return load_model(uri)[1].eval()
    return (stage1_from_hf(uri) if stage == 1 else stage2_from_hf(uri)).eval()


def read_eval_set(uri: str, max_samples: int) -> list[dict]:
    """Records {key, jpg, captions, meta} from data-prep Parquet or WebDataset shards (read on the driver: eval
    sets are small; the model work below is what runs on the cluster)."""
    import io

    import pyarrow.parquet as pq

    from pipeline.data import list_files

    out = []
    for f in list_files(uri):
        if f.endswith(".parquet"):
            t = pq.read_table(io.BytesIO(storage.read_bytes(f))).to_pylist()
            for r in t:
                meta = json.loads(r.get("meta") or "{}") if isinstance(r.get("meta"), str) else {}
                caps = [meta.get("clean_caption")] if meta.get("clean_caption") else list(r["kept_captions"])
                out.append({"key": r["key"], "jpg": r["jpg"], "captions": caps, "meta": meta})
        else:
            from pipeline.records import read_tar

            for r in read_tar(f):
                meta = json.loads(r["meta"] or "{}")
                caps = [meta.get("clean_caption") or (r["caption"] or b"").decode()]
                out.append({"key": r["key"], "jpg": r["image"], "captions": caps, "meta": meta})
        if max_samples and len(out) >= max_samples:
            break
    return out[:max_samples] if max_samples else out


class Infer:
    """Ray Data actor: per-image features and generations."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        storage.set_default(StorageConfig(**cfg["storage"]))
        self.s1 = load_any(cfg["retrieval_model"], 1) if cfg["retrieval_model"] else None
        self.s2 = load_any(cfg["caption_model"], 2) if cfg["caption_model"] else None

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        from pipeline.images import to_pixel_values
        from pipeline.models.stage2 import VQA_PROMPTS

        out = {"key": batch["key"]}
        if self.s1 is not None:
            pix = to_pixel_values(list(batch["jpg"]), self.s1.vision.image_size)
            _, feats = self.s1.image_features(pix)
            out["image_feats"] = feats.numpy()
            t = self.s1.tokenize([str(c) for c in batch["caption"]])
            out["text_feat"] = self.s1.text_features(**t).numpy()
        if self.s2 is not None:
            pix = to_pixel_values(list(batch["jpg"]), self.s2.vision.image_size)
            out["generated"] = np.array(self.s2.generate(pix, num_beams=self.cfg["num_beams"],
                                                         max_new_tokens=self.cfg["max_new_tokens"]), dtype=object)
            prompts = [VQA_PROMPTS[self.s2.kind].format(q) for q in batch["question"]]
            out["answer"] = np.array(self.s2.generate(pix, prompt=prompts, num_beams=self.cfg["num_beams"],
                                                      max_new_tokens=self.cfg["vqa_max_new_tokens"],
                                                      length_penalty=-1.0), dtype=object)
        return out


def evaluate(cfg: EvalConfig) -> dict:
    import ray
    from omegaconf import OmegaConf

    from pipeline.evaluate import caption_scores, rerank, retrieval_metrics, vqa_accuracy

    storage.set_default(cfg.storage)
    records = read_eval_set(cfg.data, cfg.max_samples)
    if not records:
        raise ValueError(f"data {cfg.data!r}: no evaluation records")
    rows = [{"key": r["key"], "jpg": r["jpg"], "caption": r["captions"][0],
             "question": (r["meta"].get("qa") or [{"question": ""}])[0]["question"]} for r in records]
    c = OmegaConf.to_container(OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg, resolve=True)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    ds = ray.data.from_items(rows).map_batches(Infer, fn_constructor_kwargs={"cfg": c}, batch_size=cfg.batch_size,
                                               compute=ray.data.ActorPoolStrategy(size=1), batch_format="numpy")
    by_key = {}
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):
        for i, k in enumerate(b["key"]):
            by_key[str(k)] = {name: b[name][i] for name in b if name != "key"}
    res = by_key
    results: dict = {"num_samples": len(records)}
    if cfg.retrieval_model:
        s1 = load_any(cfg.retrieval_model, 1)
        from pipeline.images import to_pixel_values

        img = torch.from_numpy(np.stack([res[r["key"]]["image_feats"] for r in records]))
        txt = torch.from_numpy(np.stack([res[r["key"]]["text_feat"] for r in records]))
        itc = torch.einsum("iqe,te->itq", img, txt).amax(-1).numpy()
        pix = to_pixel_values([r["jpg"] for r in records], s1.vision.image_size)
        toks = s1.tokenize([r["captions"][0] for r in records])

        @torch.no_grad()
        def itm(imgs, txts):
            scores = []
            for s in range(0, len(imgs), 64):
                ii, tt = imgs[s:s + 64], txts[s:s + 64]
                emb = s1.vision(pix[ii])
                logits = s1.itm_logits(toks["input_ids"][tt], toks["attention_mask"][tt], emb)
                scores.append(logits[:, 1].numpy())  # ITM logit of "match", as LAVIS adds to the ITC score
            return np.concatenate(scores)

        i2t, t2i = rerank(itc, itm, cfg.k_test)
        text_image = np.arange(len(records))
        itc_only = retrieval_metrics(itc, itc, text_image)
        results.update({f"retrieval_{k}": v for k, v in retrieval_metrics(i2t, t2i, text_image).items()})
        results.update({f"retrieval_itc_only_{k}": v for k, v in itc_only.items()})
        results["retrieval_chance_r1"] = 1.0 / len(records)
    if cfg.caption_model:
        gen = {r["key"]: str(res[r["key"]]["generated"]) for r in records}
        results.update({f"caption_{k}": v for k, v in caption_scores({r["key"]: r["captions"] for r in records},
                                                                      gen).items()})
        results["caption_generated"] = gen  # per key: callers score their own criteria on it (the demo does)
        with_qa = [r for r in records if r["meta"].get("qa")]
        if with_qa:
            results["vqa_accuracy"] = vqa_accuracy([str(res[r["key"]]["answer"]) for r in with_qa],
                                                   [[r["meta"]["qa"][0]["answer"]] for r in with_qa])
        results["examples"] = [{"key": r["key"], "reference": r["captions"][0], "generated": gen[r["key"]]}
                               for r in records[:8]]
    _print_table(results)
    if cfg.output:
        storage.write_text(cfg.output, json.dumps(results, indent=2))
    return results


def _print_table(results: dict) -> None:
    print(f"{'metric':40s} value")
    for k, v in results.items():
        if isinstance(v, float):
            print(f"{k:40s} {v:.4f}")


def main(argv: list[str] | None = None) -> dict:
    return evaluate(load_config(EvalConfig, argv, description=__doc__.splitlines()[0]))


if __name__ == "__main__":
    main()
