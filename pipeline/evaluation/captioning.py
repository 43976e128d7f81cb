"""Caption metrics through the COCO caption toolkit's own pipeline (pycocoevalcap, as ``COCOEvalCap.evaluate``
runs it): Stanford PTBTokenizer (Java) on references and candidates, then BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D)
and SPICE. Scores are on the toolkit's 0-1 scale; :func:`caption_scores` reports them x100 as the paper does.

Java (>= 8) must be on PATH: the tokenizer, METEOR and SPICE are Java programs shipped inside pycocoevalcap.
SPICE also needs Stanford CoreNLP 3.6.0 models that pycocoevalcap downloads on first use (about 400 MB from
nlp.stanford.edu); where they are absent and cannot be fetched, SPICE is reported as unavailable, not guessed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

ALL_METRICS = ("bleu", "meteor", "rouge", "cider", "spice")


class JavaMissingError(RuntimeError):
    pass


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError("caption metrics need Java on PATH (pycocoevalcap's PTBTokenizer, METEOR and SPICE are "
                               "Java programs); install a JRE, e.g. `apt-get install openjdk-17-jre-headless`")
    return java


def spice_available() -> tuple[bool, str]:
    """(usable, why not): SPICE needs the Stanford CoreNLP 3.6.0 jars in pycocoevalcap/spice/lib."""
    import pycocoevalcap.spice.get_stanford_models as g

    lib = os.path.join(g.SPICEDIR, g.SPICELIB)
    missing = [f for f in (f"{g.JAR}.jar", f"{g.JAR}-models.jar") if not os.path.exists(os.path.join(lib, f))]
    if missing:
        return False, (f"SPICE needs {', '.join(missing)} in {lib} (pycocoevalcap downloads them from "
                       "nlp.stanford.edu on first use: run `python -c 'from pycocoevalcap.spice.get_stanford_models "
                       "import get_stanford_models as g; g()'` with network access)")
    return True, ""


def tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """PTB tokenisation as COCOEvalCap does it: lowercased, punctuation tokens dropped."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def coco_scores(references: dict[str, list[str]], candidates: dict[str, str],
                metrics: Iterable[str] = ALL_METRICS, spice: str = "auto") -> dict[str, float]:
    """The toolkit's corpus scores on its own 0-1 scale: Bleu_1..4, METEOR, ROUGE_L, CIDEr, SPICE.

    ``spice``: "auto" (skip with a note when its models are absent), "require" (raise then) or "off".
    """
    metrics = tuple(metrics)
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metrics {sorted(unknown)}; choose from {ALL_METRICS}")
    missing = [k for k in references if k not in candidates]
    if missing:
        raise KeyError(f"{len(missing)} images have no generated caption, e.g. {missing[:3]}")
    if any(not refs for refs in references.values()):
        raise ValueError("every image needs at least one reference caption")
    gts = tokenize(references)
    res = tokenize({k: [candidates[k]] for k in references})
    out: dict[str, float] = {}
    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "meteor" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        try:
            out["METEOR"] = float(m.compute_score(gts, res)[0])
        finally:
            _close_meteor(m)
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if "spice" in metrics and spice != "off":
        ok, why = spice_available()
        if ok:
            from pycocoevalcap.spice.spice import Spice

            out["SPICE"] = float(Spice().compute_score(gts, res)[0])
        elif spice == "require":
            raise RuntimeError(why)
    return out


def _close_meteor(m) -> None:
    # Meteor keeps a JVM running until garbage collection; close it now so jobs do not leak processes.
    p = getattr(m, "meteor_p", None)
    if p is not None and p.poll() is None:
        p.stdin.close()
        p.kill()
        p.wait()


# toolkit name -> key in our results (x100, as the paper's tables)
RESULT_KEYS = {"Bleu_1": "bleu1", "Bleu_2": "bleu2", "Bleu_3": "bleu3", "Bleu_4": "bleu4", "METEOR": "meteor",
               "ROUGE_L": "rouge_l", "CIDEr": "cider", "SPICE": "spice"}


def caption_scores(references: dict[str, list[str]], candidates: dict[str, str],
                   metrics: Iterable[str] = ALL_METRICS, spice: str = "auto") -> dict[str, float]:
    """:func:`coco_scores` as the paper prints them: x100, keys bleu4, cider, meteor, rouge_l, spice."""
    return {RESULT_KEYS[k]: 100.0 * v for k, v in coco_scores(references, candidates, metrics, spice).items()}
