"""VQA accuracy against the official GT-Vision-Lab/VQA evaluation (values in fixtures/evaluation/vqa_official.json,
computed with the official vqaEval.py by fixtures/evaluation/make_vqa_reference.py)."""

import json
import os

import pytest

from pipeline.evaluation.vqa import exact_match_accuracy, normalize_answer, question_accuracy, vqa_accuracy

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "evaluation", "vqa_official.json")


@pytest.fixture(scope="module")
def official():
    with open(FIXTURE) as f:
        return json.load(f)


def test_normalisation_equals_official_on_every_pool_string(official):
    assert len(official["normalized"]) > 120
    wrong = {s: (normalize_answer(s), want) for s, want in official["normalized"].items() if normalize_answer(s) != want}
    assert not wrong


def test_accuracy_equals_official_per_question_and_overall(official):
    cases = official["cases"]
    assert len(cases) >= 300
    for c in cases:
        assert question_accuracy(c["prediction"], c["answers"]) == pytest.approx(c["official_accuracy"], abs=1e-9), c
    overall = vqa_accuracy([c["prediction"] for c in cases], [c["answers"] for c in cases])
    assert round(overall, 2) == official["official_overall_percent_2dp"]
    # the fixture exercises partial credit (1 or 2 matching annotators) and the leave-one-out average (0.9)
    assert {round(c["official_accuracy"], 3) for c in cases} >= {0.0, 0.3, 0.6, 0.9, 1.0}


def test_rules_by_hand():
    assert normalize_answer("Two.") == "2" and normalize_answer("the Red one!") == "red 1"
    assert normalize_answer("1,000") == "1000"  # a digit,digit group: punctuation removed, not spaced
    assert normalize_answer("red,white") == "red white" and normalize_answer("red, white") == "red white"
    assert normalize_answer("2.5") == "2.5" and normalize_answer("dont") == "don't"
    # identical references are not normalised, so "Two." does not match "2" there, but does once they differ
    assert question_accuracy("Two.", ["2"] * 10) == 0.0
    assert question_accuracy("Two.", ["2"] * 9 + ["3"]) == 1.0
    # 2 of 10 annotators: each leave-one-out subset holds 1 or 2 matches -> (8 * 2/3 + 2 * 1/3) / 10
    assert question_accuracy("cat", ["cat", "cat"] + ["dog"] * 8) == pytest.approx(0.6)
    assert exact_match_accuracy(["Yes.", "two"], ["yes", "3"]) == 50.0
    with pytest.raises(ValueError, match="reference answers"):
        question_accuracy("x", [])
