"""Answers as the VQA literature handles them: normalisation, vocabulary, soft scores and accuracies.

- :func:`normalize_answer` applies the VQA v2 evaluation's answer processing: punctuation (removed next
  to a space or in ``1,000``-style numbers, else turned into a space; a period is dropped unless a digit
  follows it), number words to digits (``"two"`` -> ``"2"``, ``"none"`` -> ``"0"``), articles dropped
  (``a``, ``an``, ``the``) and contractions written without their apostrophe restored (``"dont"`` ->
  ``"don't"``).
- :class:`AnswerVocab` holds the top-K most frequent training answers (the classifier's label space).
- :func:`vqa_accuracy` is the official VQA accuracy of one predicted answer: ``min(1, n / 3)`` where ``n``
  is the number of *other* annotators who gave it, averaged over the ten leave-one-out subsets of nine
  annotators. :func:`vqa_soft_score` is the same number from an answer's count, and is the soft target
  the classifier is trained towards (0.3, 0.6, 0.9, 1.0 for 1, 2, 3, >= 4 of 10 annotators).
- Data sets with a set of gold answers and no annotator counts (DAQUAR): :func:`exact_set_accuracy`
  (the predicted answer set equals the gold set: the measure behind the published DAQUAR figures) and
  :func:`any_gold_accuracy` (the top answer is one of the gold answers).

Two documented departures from the official evaluation script: ground-truth answers are always normalised
(the script skips that when all ten agree, so ``"two"`` x 10 never matches a normalised ``"2"``), and the
period rule is applied to every period (the script passes ``re.UNICODE`` as a replacement count, 32).

Example:
    >>> normalize_answer("Two dogs!"), normalize_answer("the T-shirt"), normalize_answer("dont know.")
    ('2 dogs', 't shirt', "don't know")
    >>> vqa_accuracy("2", ["2", "2", "two", "3", "3", "3", "3", "4", "4", "4"])
    0.9
    >>> round(vqa_soft_score(1), 2), round(vqa_soft_score(2), 2), round(vqa_soft_score(4), 2)
    (0.3, 0.6, 1.0)
"""
from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

__all__ = [
    "normalize_answer", "AnswerVocab", "vqa_soft_score", "vqa_accuracy", "exact_set_accuracy",
    "any_gold_accuracy", "answer_targets", "majority_answer", "evaluate_predictions", "NORMALIZERS",
]

# -- normalisation ---------------------------------------------------------------------------------------
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_NUMBER_IN_THOUSANDS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

# Contractions as they should be written; every spelling with some of the apostrophes left out maps back
# to it ("couldnt've", "couldn'tve", "couldntve" -> "couldn't've"), except spellings that are words of
# their own ("hell", "well", "were", "its", ...).
_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he'll", "he's", "how'd", "how'll", "how's", "i'd",
    "i'd've", "i'll", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "it's", "let's", "ma'am",
    "mightn't", "mightn't've", "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't",
    "shan't", "she'd", "she'd've", "she'll", "she's", "should've", "shouldn't", "shouldn't've",
    "somebody'd", "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll",
    "someone's", "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've",
    "there're", "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd",
    "we'd've", "we'll", "we're", "we've", "weren't", "what'll", "what're", "what's", "what've", "when's",
    "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who's", "who've", "why'll", "why're",
    "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll", "y'all'd've", "you'd",
    "you'd've", "you'll", "you're", "you've",
)
_REAL_WORDS = frozenset({"hell", "well", "were", "shell", "ill", "its", "wed", "shed", "id", "lets", "whore"})


def _contraction_spellings() -> Dict[str, str]:
    table: Dict[str, str] = {}
    for word in _CONTRACTIONS:
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        for keep in itertools.product((True, False), repeat=len(cuts)):
            if all(keep):
                continue
            spelled = "".join(ch for i, ch in enumerate(word) if i not in cuts or keep[cuts.index(i)])
            if spelled not in _REAL_WORDS and spelled not in _CONTRACTIONS:
                table.setdefault(spelled, word)
    return table


_CONTRACTION_OF = _contraction_spellings()


def _strip_punctuation(text: str) -> str:
    out = text
    thousands = _NUMBER_IN_THOUSANDS.search(text) is not None
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or thousands:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _digits_articles_contractions(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTION_OF.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """An answer as the VQA v2 evaluation compares it (see the module docstring).

    Args:
        answer: a predicted or annotated answer.

    Returns:
        The normalised answer: lower case, single spaces, no articles, digits for number words.

    Example:
        >>> normalize_answer(" Yes! "), normalize_answer("1,000"), normalize_answer("3.5"), normalize_answer("None")
        ('yes', '1000', '3.5', '0')
    """
    if not isinstance(answer, str):
        raise TypeError(f"an answer must be a string, got {type(answer).__name__}")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_strip_punctuation(text))


def _basic(answer: str) -> str:
    return " ".join(answer.lower().split())


# "vqa": the VQA v2 evaluation's normalisation; "basic": lower case and whitespace only.
NORMALIZERS = {"vqa": normalize_answer, "basic": _basic}


def _normalizer(name: str):
    if name not in NORMALIZERS:
        raise ValueError(f"answer normalisation must be one of {sorted(NORMALIZERS)}, got {name!r}")
    return NORMALIZERS[name]


# -- scores and accuracies -------------------------------------------------------------------------------
def vqa_soft_score(count: int, num_annotators: int = 10) -> float:
    """Official VQA accuracy of an answer given by ``count`` of ``num_annotators`` annotators.

    Each of the ``num_annotators`` leave-one-out subsets scores ``min(1, matches / 3)``: the ``count``
    subsets that leave out a matching annotator see ``count - 1`` matches, the others ``count``.

    Example:
        >>> [round(vqa_soft_score(c), 2) for c in range(5)]
        [0.0, 0.3, 0.6, 0.9, 1.0]
    """
    if num_annotators < 1 or not 0 <= count <= num_annotators:
        raise ValueError(f"need 0 <= count <= num_annotators >= 1, got count={count}, num_annotators={num_annotators}")
    if num_annotators == 1:  # no subset to leave one out of: the single answer decides
        return float(count)
    left_out_match = count * min(1.0, (count - 1) / 3.0) if count else 0.0
    left_out_other = (num_annotators - count) * min(1.0, count / 3.0)
    return (left_out_match + left_out_other) / num_annotators


def vqa_accuracy(prediction: str, annotator_answers: Sequence[str], normalize: str = "vqa") -> float:
    """The official VQA accuracy of one prediction against the annotators' answers (10 in VQA v2).

    Args:
        prediction: the predicted answer.
        annotator_answers: every annotator's answer, repeats included.
        normalize: ``"vqa"`` or ``"basic"``; applied to the prediction and every annotator answer.

    Returns:
        The mean over the leave-one-out subsets of ``min(1, #matching answers in the subset / 3)``.

    Example:
        >>> vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7), vqa_accuracy("no", ["yes"] * 3 + ["no"] * 7)
        (0.9, 1.0)
    """
    if not annotator_answers:
        raise ValueError("vqa_accuracy needs at least one annotator answer")
    norm = _normalizer(normalize)
    answers = [norm(a) for a in annotator_answers]
    predicted = norm(prediction)
    matches = sum(a == predicted for a in answers)
    if len(answers) == 1:
        return float(matches)
    total = 0.0
    for answer in answers:
        total += min(1.0, (matches - (answer == predicted)) / 3.0)
    return total / len(answers)


def exact_set_accuracy(predicted: Iterable[str], gold: Iterable[str], normalize: str = "vqa") -> float:
    """1.0 when the predicted answer set equals the gold set (after normalisation), else 0.0.

    Example:
        >>> exact_set_accuracy(["cup", "book"], ["book", "cup"]), exact_set_accuracy(["cup"], ["cup", "book"])
        (1.0, 0.0)
    """
    norm = _normalizer(normalize)
    return float({norm(a) for a in predicted} == {norm(a) for a in gold})


def any_gold_accuracy(prediction: str, gold: Iterable[str], normalize: str = "vqa") -> float:
    """1.0 when the top predicted answer is one of the gold answers, else 0.0.

    Example:
        >>> any_gold_accuracy("cup", ["book", "cup"]), any_gold_accuracy("lamp", ["book", "cup"])
        (1.0, 0.0)
    """
    norm = _normalizer(normalize)
    return float(norm(prediction) in {norm(a) for a in gold})


# -- vocabulary ------------------------------------------------------------------------------------------
class AnswerVocab:
    """The classifier's answers: the ``top_k`` most frequent (normalised) training answers.

    Args:
        answers: the answers in label order (already normalised).
        normalize: the normalisation applied to answers looked up with :meth:`index` / :meth:`targets`.

    Example:
        >>> vocab = AnswerVocab.build([["yes"], ["Yes", "no"], ["two"], ["2"], ["red"]], top_k=3)
        >>> vocab.answers, vocab.index("YES!"), "red" in vocab
        (['yes', '2', 'no'], 0, False)
    """

    def __init__(self, answers: Sequence[str], normalize: str = "vqa") -> None:
        _normalizer(normalize)
        answers = list(answers)
        if not answers:
            raise ValueError("an answer vocabulary needs at least one answer")
        if len(set(answers)) != len(answers):
            raise ValueError("answers in a vocabulary must be distinct")
        self.answers: List[str] = answers
        self.normalize = normalize
        self._index = {a: i for i, a in enumerate(answers)}

    @classmethod
    def build(cls, answer_lists: Iterable[Iterable[str]], top_k: int = 3129, min_count: int = 1,
              normalize: str = "vqa") -> "AnswerVocab":
        """Count answers over questions (each distinct normalised answer once per question) and keep the
        ``top_k`` most frequent with at least ``min_count`` questions; ties keep first-seen order.

        Args:
            answer_lists: one list of answers per training question (annotator answers or gold set).
            top_k: largest vocabulary size (3,129 is VQA v2's usual choice).
            min_count: fewest questions an answer needs.
            normalize: ``"vqa"`` or ``"basic"``.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        norm = _normalizer(normalize)
        counts: Counter = Counter()
        for answers in answer_lists:
            counts.update({a for a in (norm(x) for x in answers) if a})
        kept = [a for a, n in counts.most_common() if n >= min_count][:top_k]
        if not kept:
            raise ValueError(f"no answer occurs in at least {min_count} questions")
        return cls(kept, normalize)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return _normalizer(self.normalize)(answer) in self._index

    def index(self, answer: str) -> int:
        """Label of ``answer`` (normalised first); ``-1`` when it is not in the vocabulary."""
        return self._index.get(_normalizer(self.normalize)(answer), -1)

    def __getitem__(self, label: int) -> str:
        return self.answers[label]

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write ``{"normalize": ..., "answers": [...]}`` as JSON."""
        Path(path).write_text(json.dumps({"normalize": self.normalize, "answers": self.answers}, indent=0) + "\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "AnswerVocab":
        """Read a vocabulary written by :meth:`save` (or a plain JSON list of answers)."""
        data = json.loads(Path(path).read_text())
        if isinstance(data, list):
            return cls(data)
        return cls(data["answers"], data.get("normalize", "vqa"))

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers, normalize={self.normalize!r})"


def answer_targets(answer_counts: Mapping[str, int], multi_label: bool, vocab: AnswerVocab) -> Dict[int, float]:
    """The soft targets of one question: ``{label: score}`` over the answers in ``vocab``.

    Annotator answers (``multi_label=False``): each distinct normalised answer scores
    :func:`vqa_soft_score` of its count among all annotators. Gold answer sets (``multi_label=True``):
    every gold answer scores 1.

    Example:
        >>> vocab = AnswerVocab(["2", "3", "cup", "book"])
        >>> answer_targets({"two": 2, "2": 1, "3": 7}, False, vocab)
        {0: 0.9, 1: 1.0}
        >>> answer_targets({"cup": 1, "book": 1, "lamp": 1}, True, vocab)
        {2: 1.0, 3: 1.0}
    """
    norm = _normalizer(vocab.normalize)
    merged: Counter = Counter()
    for answer, count in answer_counts.items():
        merged[norm(answer)] += int(count)
    total = sum(merged.values())
    targets: Dict[int, float] = {}
    for answer, count in merged.items():
        label = vocab._index.get(answer, -1)
        if label < 0:
            continue
        targets[label] = 1.0 if multi_label else round(vqa_soft_score(count, total), 6)
    return targets


def majority_answer(answer_lists: Iterable[Iterable[str]], normalize: str = "vqa") -> Optional[str]:
    """The answer given for the most questions (normalised), or ``None`` without answers."""
    norm = _normalizer(normalize)
    counts: Counter = Counter()
    for answers in answer_lists:
        counts.update({norm(a) for a in answers})
    return counts.most_common(1)[0][0] if counts else None


# -- scoring a set of predictions ------------------------------------------------------------------------
def _annotator_answers(record: Any) -> List[str]:
    return [answer for answer, count in record.answer_counts.items() for _ in range(int(count))]


def evaluate_predictions(records: Sequence[Any], top_answers: Sequence[str], answer_sets: Sequence[Sequence[str]],
                         normalize: str = "vqa") -> Dict[str, Any]:
    """Score predictions question by question, overall and by question and answer type.

    Annotator-count questions (``multi_label=False``, VQA v2) score :func:`vqa_accuracy` of the top
    answer; gold-set questions (``multi_label=True``, DAQUAR) score :func:`exact_set_accuracy` of the
    answer set as their ``accuracy``, with :func:`any_gold_accuracy` of the top answer reported beside it.
    Questions without answers (a test split) are not scored.

    Args:
        records: :class:`~vlptm.data.readers.QuestionRecord` s.
        top_answers: the top predicted answer of each question.
        answer_sets: the predicted answer set of each question (used for gold-set questions).
        normalize: answer normalisation.

    Returns:
        ``{"accuracy", "n", "vqa_accuracy"?, "exact_set"?, "any_gold"?, "by_question_type": {type: {"n",
        "accuracy"}}, "by_answer_type": {...}}`` (accuracies in ``[0, 1]``; types only where records have
        them).

    Example:
        >>> from pathlib import Path
        >>> from vlptm.data.readers import QuestionRecord
        >>> daquar = QuestionRecord("0", "image1", Path("."), "what is on the table?", ["cup", "book"],
        ...                         {"cup": 1, "book": 1}, multi_label=True)
        >>> m = evaluate_predictions([daquar], ["cup"], [["cup"]])
        >>> m["accuracy"], m["exact_set"], m["any_gold"]
        (0.0, 0.0, 1.0)
    """
    if not len(records) == len(top_answers) == len(answer_sets):
        raise ValueError(f"{len(records)} records, {len(top_answers)} top answers and {len(answer_sets)} answer "
                         f"sets: one of each per question")
    headline: List[float] = []
    counted: List[float] = []
    exact: List[float] = []
    any_gold: List[float] = []
    by_question: Dict[str, List[float]] = {}
    by_answer: Dict[str, List[float]] = {}
    for record, top, answer_set in zip(records, top_answers, answer_sets):
        if not record.answer_counts:
            continue
        if record.multi_label:
            score = exact_set_accuracy(answer_set, record.answers, normalize)
            exact.append(score)
            any_gold.append(any_gold_accuracy(top, record.answers, normalize))
        else:
            score = vqa_accuracy(top, _annotator_answers(record), normalize)
            counted.append(score)
        headline.append(score)
        if record.question_type:
            by_question.setdefault(record.question_type, []).append(score)
        if record.answer_type:
            by_answer.setdefault(record.answer_type, []).append(score)

    def mean(values: List[float]) -> float:
        return float(sum(values) / len(values)) if values else 0.0

    out: Dict[str, Any] = {"accuracy": mean(headline), "n": len(headline)}
    if counted:
        out["vqa_accuracy"] = mean(counted)
    if exact:
        out["exact_set"] = mean(exact)
        out["any_gold"] = mean(any_gold)
    out["by_question_type"] = {k: {"n": len(v), "accuracy": mean(v)} for k, v in sorted(by_question.items())}
    out["by_answer_type"] = {k: {"n": len(v), "accuracy": mean(v)} for k, v in sorted(by_answer.items())}
    return out
