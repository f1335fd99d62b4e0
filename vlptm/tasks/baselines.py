"""Image-blind baselines a VQA model has to beat: the majority answer and a question-prior lookup.

Both predict from the question alone, with the same outputs as the fine-tuned model (a top answer and an
answer set), so :func:`vlptm.tasks.answers.evaluate_predictions` scores them the same way.

Example:
    >>> from pathlib import Path
    >>> from vlptm.data.readers import QuestionRecord
    >>> def q(text, *answers):
    ...     return QuestionRecord("0", "img", Path("."), text, list(answers), {a: 1 for a in answers}, multi_label=True)
    >>> train = [q("what is on the desk?", "lamp"), q("what is on the desk?", "lamp"), q("how many chairs?", "2")]
    >>> lookup = QuestionLookupBaseline().fit(train)
    >>> lookup.predict("What is on the desk?"), lookup.predict("what colour is it?")
    (('lamp', ['lamp']), ('lamp', ['lamp']))
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Dict, List, Sequence, Tuple

from vlptm.tasks.answers import NORMALIZERS, evaluate_predictions

__all__ = ["MajorityAnswerBaseline", "QuestionLookupBaseline"]

Prediction = Tuple[str, List[str]]


def _answer_key(record: Any, norm) -> Tuple[Tuple[str, ...], List[str]]:
    """The record's gold answer set (gold-set data) or its most frequent answer (annotator counts)."""
    if record.multi_label:
        answers = sorted({norm(a) for a in record.answers})
    else:
        counts: Counter = Counter()
        for answer, count in record.answer_counts.items():
            counts[norm(answer)] += int(count)
        answers = [counts.most_common(1)[0][0]]
    return tuple(answers), answers


class _Baseline:
    def __init__(self, normalize: str = "vqa") -> None:
        self.normalize = normalize
        self._norm = NORMALIZERS[normalize]

    def predict(self, question: str) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, records: Sequence[Any]) -> Dict[str, Any]:
        """Metrics of :func:`~vlptm.tasks.answers.evaluate_predictions` on ``records``."""
        predictions = [self.predict(r.question) for r in records]
        return evaluate_predictions(records, [p[0] for p in predictions], [p[1] for p in predictions],
                                    self.normalize)

    @staticmethod
    def _summary(records: Sequence[Any], norm) -> Prediction:
        """The most frequent answer set (and, as top answer, the most frequent answer) of ``records``."""
        sets: Counter = Counter()
        answers: Counter = Counter()
        for record in records:
            key, listed = _answer_key(record, norm)
            if key:
                sets[key] += 1
                answers.update(listed)
        if not sets:
            raise ValueError("no answered question to learn from")
        return answers.most_common(1)[0][0], list(sets.most_common(1)[0][0])


class MajorityAnswerBaseline(_Baseline):
    """Gives every question the training set's most frequent answer (and most frequent answer set)."""

    def fit(self, records: Sequence[Any]) -> "MajorityAnswerBaseline":
        self.prediction = self._summary(records, self._norm)
        return self

    def predict(self, question: str) -> Prediction:
        return self.prediction[0], list(self.prediction[1])


class QuestionLookupBaseline(_Baseline):
    """The question prior: the answers most often given to the same question in training.

    A test question seen word for word in training (after lower-casing and collapsing spaces) gets that
    question's most frequent answer set; an unseen one gets the most frequent set of the training
    questions sharing its first ``prefix_words`` words ("what is on", "how many chairs"), and failing that
    the global majority.

    Args:
        prefix_words: words of the fallback question prefix.
        normalize: answer normalisation.
    """

    def __init__(self, prefix_words: int = 3, normalize: str = "vqa") -> None:
        super().__init__(normalize)
        self.prefix_words = prefix_words

    @staticmethod
    def _question_key(question: str) -> str:
        return " ".join(question.lower().replace("?", " ? ").split())

    def _prefix(self, question: str) -> str:
        return " ".join(self._question_key(question).split()[: self.prefix_words])

    def fit(self, records: Sequence[Any]) -> "QuestionLookupBaseline":
        by_question: Dict[str, list] = defaultdict(list)
        by_prefix: Dict[str, list] = defaultdict(list)
        for record in records:
            by_question[self._question_key(record.question)].append(record)
            by_prefix[self._prefix(record.question)].append(record)
        self.by_question = {k: self._summary(v, self._norm) for k, v in by_question.items()}
        self.by_prefix = {k: self._summary(v, self._norm) for k, v in by_prefix.items()}
        self.fallback = self._summary(records, self._norm)
        return self

    def predict(self, question: str) -> Prediction:
        found = (self.by_question.get(self._question_key(question)) or self.by_prefix.get(self._prefix(question))
                 or self.fallback)
        return found[0], list(found[1])
