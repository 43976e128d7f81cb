"""VQA accuracy by the official VQAv2 rules (GT-Vision-Lab/VQA, ``vqaEval.py``), reimplemented from its behaviour.

Rules, in the order the official evaluation applies them:
- newlines and tabs become spaces and the answer is stripped;
- only when the 10 reference answers are NOT all identical are the references and the prediction normalised:
  punctuation (removed outright when it touches a space or the text holds a digit,digit group, else replaced by a
  space), periods that are not followed by a digit removed (at most 32 of them: the official code passes
  ``re.UNICODE`` where ``re.sub`` expects ``count``), then lowercase, number words to digits, articles dropped,
  apostrophe-less contractions restored;
- each of the 10 leave-one-out subsets of 9 references scores min(1, matches / 3); the question scores their mean.
``tests/test_evaluate_vqa.py`` checks this against values computed with the official code.
"""

from __future__ import annotations

import re

from pipeline.evaluation.vqa_contractions import CONTRACTIONS

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# Characters the official evaluation treats as punctuation. Not in it: apostrophe, period (own rule), colon, #, %, *
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (malformed) lookahead that never applies, so in
# effect a period is dropped unless a digit follows it.
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # re.UNICODE (== 32) lands in re.sub's count argument in the official code


def _punctuation(text: str) -> str:
    out = text
    glued = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        # The test looks at the original text, the replacement acts on the text being rewritten (as officially).
        out = out.replace(p, "" if (p + " " in text or " " + p in text or glued) else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official answer normalisation (punctuation, periods, lowercase, digits, articles, contractions)."""
    return _digits_articles(_punctuation(_clean(answer)))


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, answers: list[str]) -> float:
    """One question's official VQA accuracy in [0, 1]: mean over leave-one-out subsets of min(1, matches / 3)."""
    if not answers:
        raise ValueError("a VQA question needs its reference answers (VQAv2 and OK-VQA have 10)")
    refs = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(refs)) > 1:  # the official code normalises only when the annotators disagree
        refs = [normalize_answer(a) for a in refs]
        pred = normalize_answer(pred)
    total_matches = sum(r == pred for r in refs)
    scores = [min(1.0, (total_matches - (r == pred)) / 3) for r in refs]
    return sum(scores) / len(scores)


def vqa_accuracy(predictions: list[str], answers: list[list[str]]) -> float:
    """Mean official VQA accuracy in percent (as the paper reports), over every question given."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        raise ValueError("no VQA questions to score")
    return 100.0 * sum(question_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions)


def exact_match_accuracy(predictions: list[str], answers: list[str]) -> float:
    """GQA accuracy as LAVIS's GQA task scores it: both sides normalised, then exact match, in percent."""
    if len(predictions) != len(answers) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    hits = [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]
    return 100.0 * sum(hits) / len(hits)
