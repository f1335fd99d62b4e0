"""Answer normalisation, vocabulary, soft scores and accuracies against hand-worked examples."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vlptm.data.readers import QuestionRecord
from vlptm.tasks.answers import (AnswerVocab, answer_targets, any_gold_accuracy, evaluate_predictions,
                                 exact_set_accuracy, normalize_answer, vqa_accuracy, vqa_soft_score)
from vlptm.tasks.baselines import MajorityAnswerBaseline, QuestionLookupBaseline


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"),
    ("  yes!  ", "yes"),
    ("two", "2"),
    ("None", "0"),
    ("ten", "10"),
    ("a dog", "dog"),
    ("The Red Ball", "red ball"),
    ("an apple and a pear", "apple and pear"),
    ("dont", "don't"),
    ("couldnt've", "couldn't've"),
    ("couldn'tve", "couldn't've"),
    ("its", "its"),  # a word of its own, not "it's"
    ("well", "well"),
    ("t-shirt", "t shirt"),  # punctuation inside a word becomes a space
    ("red, white", "red white"),  # punctuation next to a space is removed
    ("1,000", "1000"),  # thousands separator
    ("3.5", "3.5"),  # a period before a digit stays
    ("dr. pepper", "dr pepper"),
    ("yes.", "yes"),
    ("left/right", "left right"),
    ('"hi"', "hi"),
    ("garbage_bin", "garbage bin"),
    ("at 3 o'clock", "at 3 o'clock"),
    ("Two\tdogs\n", "2 dogs"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_rejects_non_strings():
    with pytest.raises(TypeError):
        normalize_answer(3)


def _brute_force_accuracy(prediction, answers):
    """The VQA formula written out: every 9-of-10 subset, min(1, matches / 3), averaged."""
    scores = []
    for subset in itertools.combinations(range(len(answers)), len(answers) - 1):
        matches = sum(answers[i] == prediction for i in subset)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


@pytest.mark.parametrize("count, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_official_accuracy_by_count(count, expected):
    answers = ["cat"] * count + ["dog"] * (10 - count)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)
    assert vqa_soft_score(count) == pytest.approx(expected)
    assert _brute_force_accuracy("cat", answers) == pytest.approx(expected)


def test_official_accuracy_hand_worked_mixed_answers():
    # 2 say "2", 1 says "two" (normalised to "2"), 4 say "3", 3 say "4":
    # "2" is given by 3 annotators -> (3 * 2/3 + 7 * 1) / 10 = 0.9;
    # "4" by 3 -> 0.9; "3" by 4 -> 1.0; "5" by none -> 0.
    answers = ["2", "2", "two", "3", "3", "3", "3", "4", "4", "4"]
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)
    assert vqa_accuracy("Two", answers) == pytest.approx(0.9)
    assert vqa_accuracy("3", answers) == pytest.approx(1.0)
    assert vqa_accuracy("4", answers) == pytest.approx(0.9)
    assert vqa_accuracy("5", answers) == 0.0
    normalised = [normalize_answer(a) for a in answers]
    for prediction in ("2", "3", "4"):
        assert vqa_accuracy(prediction, answers) == pytest.approx(_brute_force_accuracy(prediction, normalised))


def test_soft_score_other_annotator_counts():
    # 5 annotators, 2 agree: leave out one of the 2 -> 1/3 (twice); leave out another -> 2/3 (3 times).
    assert vqa_soft_score(2, 5) == pytest.approx((2 * (1 / 3) + 3 * (2 / 3)) / 5)
    assert vqa_accuracy("a", ["a", "a", "b", "c", "d"]) == pytest.approx(vqa_soft_score(2, 5))
    assert vqa_soft_score(1, 1) == 1.0
    with pytest.raises(ValueError):
        vqa_soft_score(11, 10)


def test_exact_set_and_any_gold():
    gold = ["chair", "table", "garbage_bin"]
    assert exact_set_accuracy(["table", "garbage bin", "chair"], gold) == 1.0
    assert exact_set_accuracy(["table", "chair"], gold) == 0.0
    assert exact_set_accuracy(["table", "chair", "garbage_bin", "lamp"], gold) == 0.0
    assert any_gold_accuracy("Table", gold) == 1.0
    assert any_gold_accuracy("lamp", gold) == 0.0


def test_vocab_top_k_min_count_ties_and_round_trip(tmp_path):
    lists = [["yes"], ["Yes", "yes", "no"], ["two"], ["2"], ["red"], ["no"], ["blue"], ["blue"]]
    vocab = AnswerVocab.build(lists, top_k=3)
    # per-question counts: yes 2 (repeats inside a question count once), no 2, 2 2, blue 2, red 1
    assert vocab.answers == ["yes", "no", "2"]  # ties keep first-seen order
    assert AnswerVocab.build(lists, top_k=10, min_count=2).answers == ["yes", "no", "2", "blue"]
    assert vocab.index("TWO") == 2 and vocab.index("red") == -1 and "red" not in vocab
    vocab.save(tmp_path / "answers.json")
    again = AnswerVocab.load(tmp_path / "answers.json")
    assert again.answers == vocab.answers and again.normalize == "vqa"
    with pytest.raises(ValueError):
        AnswerVocab(["a", "a"])
    with pytest.raises(ValueError):
        AnswerVocab.build([["a"]], min_count=2)


def test_answer_targets():
    vocab = AnswerVocab(["2", "3", "cup", "book"])
    # annotator counts: "two" and "2" merge into 3 of 10 -> 0.9; "3" 7 of 10 -> 1.0
    assert answer_targets({"two": 2, "2": 1, "3": 7}, False, vocab) == {0: 0.9, 1: 1.0}
    assert answer_targets({"cup": 1, "book": 1, "lamp": 1}, True, vocab) == {2: 1.0, 3: 1.0}
    assert answer_targets({"lamp": 1}, True, vocab) == {}


def _record(question, answers, multi_label=True, qtype=None, atype=None, counts=None):
    return QuestionRecord("0", "img", Path("."), question, list(answers), counts or {a: 1 for a in answers},
                          question_type=qtype, answer_type=atype, multi_label=multi_label)


def test_evaluate_predictions_mixes_conventions_and_breaks_down_by_type():
    records = [
        _record("what is on the table?", ["cup", "book"], qtype="what", atype="other"),
        _record("what is on the chair?", ["bag"], qtype="what", atype="other"),
        _record("how many?", ["2"] * 3 + ["3"] * 7, multi_label=False, qtype="count", atype="number",
                counts={"2": 3, "3": 7}),
        _record("unanswered?", [], counts={}),
    ]
    metrics = evaluate_predictions(records, ["cup", "bag", "2", "x"], [["cup"], ["bag"], ["2"], ["x"]])
    assert metrics["n"] == 3  # the unanswered question is not scored
    assert metrics["exact_set"] == pytest.approx(0.5) and metrics["any_gold"] == pytest.approx(1.0)
    assert metrics["vqa_accuracy"] == pytest.approx(0.9)
    assert metrics["accuracy"] == pytest.approx((0.0 + 1.0 + 0.9) / 3)
    assert metrics["by_question_type"]["what"] == {"n": 2, "accuracy": pytest.approx(0.5)}
    assert metrics["by_answer_type"]["number"] == {"n": 1, "accuracy": pytest.approx(0.9)}
    with pytest.raises(ValueError):
        evaluate_predictions(records, ["a"], [["a"]])


def test_baselines():
    train = [
        _record("what is on the desk?", ["lamp", "book"]),
        _record("what is on the desk?", ["book", "lamp"]),
        _record("what is on the desk?", ["paper"]),
        _record("what is on the floor?", ["rug"]),
        _record("how many chairs are there?", ["2"]),
        _record("how many chairs are in the room?", ["3"]),
        _record("how many chairs are near the table?", ["3"]),
    ]
    lookup = QuestionLookupBaseline(prefix_words=3).fit(train)
    top, answer_set = lookup.predict("What is on the desk ?")
    assert sorted(answer_set) == ["book", "lamp"] and top in ("book", "lamp")  # seen word for word
    assert lookup.predict("how many chairs can you see?") == ("3", ["3"])  # prefix "how many chairs"
    test = [_record("what is on the desk?", ["book", "lamp"]), _record("how many chairs are there?", ["3"])]
    assert lookup.evaluate(test)["accuracy"] == pytest.approx(0.5)
    majority = MajorityAnswerBaseline().fit(train)
    assert majority.predict("anything?")[0] in ("book", "lamp", "3")
    assert majority.evaluate(test)["n"] == 2
