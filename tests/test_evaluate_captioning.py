"""Caption metrics equal pycocoevalcap's full COCOEvalCap pipeline (PTB tokenisation included) on punctuated,
multi-reference sets."""

import pytest

from pipeline.evaluation.captioning import caption_scores, coco_scores, require_java, spice_available

REFS = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides the big wave!", "Man on a surfboard, riding."],
    2: ["Two dogs play in the park.", "Two dogs (brown & white) running on grass.", "dogs; playing -- outside",
        "A pair of dogs chase a ball...", "The dogs aren't on a leash."],
    3: ["A red stop sign on a street corner.", "Stop-sign at the corner of the street", "A STOP sign.",
        "a sign that says \"stop\""],
    4: ["A plate of food with broccoli and rice.", "Rice, broccoli, and chicken on a white plate.",
        "Dinner: chicken & rice."],
}
CANDS = {1: "a man riding a wave on a surfboard.", 2: "Two dogs are playing in the grass!",
         3: "a stop sign on the side of a road", 4: "A plate of rice, broccoli and meat."}


class _Coco:  # the two attributes COCOEvalCap reads from pycocotools' COCO objects
    def __init__(self, anns):
        self.imgToAnns = {k: [{"image_id": k, "caption": c} for c in v] for k, v in anns.items()}

    def getImgIds(self):
        return list(self.imgToAnns)


@pytest.fixture(scope="module")
def official(request):
    require_java()
    import pycocoevalcap.eval as E

    class _NoSpice:  # SPICE's models are a download; compared separately when present
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    spice_ok, _ = spice_available()
    saved = E.Spice
    if not spice_ok:
        E.Spice = _NoSpice
    try:
        ev = E.COCOEvalCap(_Coco(REFS), _Coco({k: [v] for k, v in CANDS.items()}))
        ev.evaluate()
    finally:
        E.Spice = saved
    return ev.eval, spice_ok


def test_scores_equal_cocoevalcap_pipeline(official):
    want, spice_ok = official
    got = coco_scores({str(k): v for k, v in REFS.items()}, {str(k): v for k, v in CANDS.items()})
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert got[name] == pytest.approx(want[name], abs=1e-9), name
    assert ("SPICE" in got) == spice_ok
    if spice_ok:
        assert got["SPICE"] == pytest.approx(want["SPICE"], abs=1e-9)
    assert 0.0 < got["CIDEr"] < 10.0 and 0.0 < got["Bleu_4"] < 1.0


def test_paper_scale_and_punctuation_insensitivity():
    refs = {"a": REFS[1], "b": REFS[2]}
    s = caption_scores(refs, {"a": "A man riding a wave on top of a surfboard", "b": "two dogs play in the park"},
                       metrics=("bleu", "cider"))
    s2 = caption_scores(refs, {"a": "a man, riding a wave on top of a surfboard!", "b": "Two dogs play in the park."},
                        metrics=("bleu", "cider"))
    assert s["cider"] == pytest.approx(s2["cider"], abs=1e-9)  # PTB drops the punctuation tokens
    assert s["bleu4"] == pytest.approx(s2["bleu4"], abs=1e-9)
    assert 1.0 < s["cider"] and set(s) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="no generated caption"):
        coco_scores({"a": ["x"]}, {}, metrics=("cider",))
    with pytest.raises(ValueError, match="unknown caption metrics"):
        coco_scores({"a": ["x"]}, {"a": "x"}, metrics=("bleurt",))


def test_missing_java_fails_clearly(monkeypatch):
    import pipeline.evaluation.captioning as C

    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(C.JavaMissingError, match="Java"):
        coco_scores({"a": ["x"]}, {"a": "x"}, metrics=("cider",))
