"""The BLIP-2 paper's numbers (arXiv 2301.12597 v3, Tables 2, 3 and 5) and a printed table that puts a run's
results beside them in the paper's layout."""

from __future__ import annotations

# Table 5: COCO-fine-tuned models, 364 px, k_test=128; Flickr30K is zero-shot with the COCO-fine-tuned model.
RETRIEVAL = {
    "coco": {"BLIP-2 ViT-L": (83.5, 96.0, 98.0, 66.3, 86.5, 91.8), "BLIP-2 ViT-g": (85.4, 97.0, 98.5, 68.3, 87.7, 92.6)},
    "flickr30k": {"BLIP-2 ViT-L": (96.9, 100.0, 100.0, 88.6, 97.6, 98.9),
                  "BLIP-2 ViT-g": (97.6, 100.0, 100.0, 89.7, 98.1, 98.9)},
}
RETRIEVAL_KEYS = ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10")

# Table 3: COCO-fine-tuned captioning (prompt "a photo of", beam 5); COCO Karpathy test B@4 / CIDEr, and NoCaps val
# zero-shot CIDEr / SPICE per domain.
COCO_CAPTION = {"ViT-g OPT-2.7B": (43.7, 145.8), "ViT-g OPT-6.7B": (43.5, 145.2), "ViT-g FlanT5-XL": (42.4, 144.5)}
NOCAPS = {  # (in, near, out, overall) as (CIDEr, SPICE)
    "ViT-g OPT-2.7B": ((123.0, 15.8), (117.8, 15.4), (123.4, 15.1), (119.7, 15.4)),
    "ViT-g OPT-6.7B": ((123.7, 15.8), (119.2, 15.3), (124.4, 14.8), (121.0, 15.3)),
    "ViT-g FlanT5-XL": ((123.7, 16.3), (120.2, 15.9), (124.8, 15.1), (121.6, 15.8)),
}
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain", "overall")

# Table 2: zero-shot VQA accuracy (VQAv2 val, OK-VQA test, GQA test-dev).
VQA = {
    "ViT-L OPT-2.7B": {"vqav2": 50.1, "okvqa": 30.2, "gqa": 33.9},
    "ViT-g OPT-2.7B": {"vqav2": 53.5, "okvqa": 31.7, "gqa": 34.6},
    "ViT-g OPT-6.7B": {"vqav2": 54.3, "okvqa": 36.4, "gqa": 36.4},
    "ViT-L FlanT5-XL": {"vqav2": 62.6, "okvqa": 39.4, "gqa": 44.4},
    "ViT-g FlanT5-XL": {"vqav2": 63.1, "okvqa": 40.7, "gqa": 44.2},
    "ViT-g FlanT5-XXL": {"vqav2": 65.2, "okvqa": 45.9, "gqa": 44.7},
}


def _fmt(v) -> str:
    return f"{v:6.1f}" if isinstance(v, (int, float)) else f"{'-':>6}"


def _rows(title: str, header: list[str], ours: list, paper: dict[str, tuple]) -> list[str]:
    lines = [title, f"{'':28s}" + "".join(f"{h:>8s}" for h in header), f"{'this run':28s}" +
             "".join(f"{_fmt(v):>8s}" for v in ours)]
    lines += [f"{'paper ' + name:28s}" + "".join(f"{_fmt(v):>8s}" for v in vals) for name, vals in paper.items()]
    return lines


def table(results: dict, benchmark: str) -> str:
    """The run's numbers beside the paper's, for the benchmarks this run evaluated."""
    out: list[str] = []
    if "retrieval_tr1" in results:
        ours = [results[f"retrieval_{k}"] for k in RETRIEVAL_KEYS]
        paper = RETRIEVAL.get(benchmark, {})
        out += _rows(f"Retrieval ({benchmark}, {results.get('retrieval_images')} images, "
                     f"{results.get('retrieval_texts')} texts; paper Table 5)",
                     ["TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10"], ours, paper)
    if "caption_cider" in results:
        if benchmark == "nocaps":
            header, ours, paper = [], [], {}
            for d in NOCAPS_DOMAINS:
                key = "caption" if d == "overall" else f"caption_{d.replace('-', '_')}"
                header += [f"{d.split('-')[0]} C", f"{d.split('-')[0]} S"]
                ours += [results.get(f"{key}_cider"), results.get(f"{key}_spice")]
            paper = {name: tuple(x for cs in vals for x in cs) for name, vals in NOCAPS.items()}
            out += _rows("NoCaps val (CIDEr / SPICE per domain; paper Table 3)", header, ours, paper)
        else:
            out += _rows(f"Captioning ({benchmark}; paper Table 3: COCO Karpathy test)", ["B@4", "CIDEr", "METEOR",
                         "SPICE"], [results.get("caption_bleu4"), results["caption_cider"], results.get("caption_meteor"),
                                    results.get("caption_spice")],
                         {k: (*v, None, None) for k, v in COCO_CAPTION.items()} if benchmark == "coco" else {})
    if "vqa_accuracy" in results:
        paper = {k: (v[benchmark],) for k, v in VQA.items()} if benchmark in ("vqav2", "okvqa", "gqa") else {}
        out += _rows(f"Zero-shot VQA ({benchmark}, {results.get('vqa_questions')} questions; paper Table 2)",
                     ["acc"], [results["vqa_accuracy"]], paper)
    return "\n".join(out)
