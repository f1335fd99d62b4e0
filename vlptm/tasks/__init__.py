"""Downstream tasks: VQA fine-tuning (:class:`VQAFineTuner`), answer handling and image-blind baselines.

Example:
    >>> from vlptm.tasks import VQAExamples, VQAFineTuner                               # doctest: +SKIP
    >>> train, val = VQAExamples.load("world/vqa.json", "features/world").split_by_image(0.1)  # doctest: +SKIP
    >>> tuner = VQAFineTuner.from_pretrained("runs/pretrain", answers=500)             # doctest: +SKIP
    >>> tuner.fit(train, val, epochs=5)                                                 # doctest: +SKIP
    >>> tuner.predict("world/images/000001.jpg", "what color is the circle?", top_k=3)  # doctest: +SKIP
"""
from vlptm.tasks.answers import (AnswerVocab, any_gold_accuracy, answer_targets, evaluate_predictions,
                                 exact_set_accuracy, normalize_answer, vqa_accuracy, vqa_soft_score)
from vlptm.tasks.baselines import MajorityAnswerBaseline, QuestionLookupBaseline
from vlptm.tasks.vqa import (VQAExamples, VQAFineTuner, VQAHead, VQAModel, VQAOptions, VQATrainConfig, collate_vqa,
                             split_by_image, vqa_loss)

__all__ = [
    "AnswerVocab", "any_gold_accuracy", "answer_targets", "evaluate_predictions", "exact_set_accuracy",
    "normalize_answer", "vqa_accuracy", "vqa_soft_score", "MajorityAnswerBaseline", "QuestionLookupBaseline",
    "VQAExamples", "VQAFineTuner", "VQAHead", "VQAModel", "VQAOptions", "VQATrainConfig", "collate_vqa",
    "split_by_image", "vqa_loss",
]
