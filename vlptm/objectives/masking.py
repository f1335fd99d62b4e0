"""Masking for MLM and MRM: which tokens and regions an example hides, drawn from a per-example RNG.

Text schemes (``scheme``):

- ``"token"`` (BERT): every maskable token is selected with probability ``prob``.
- ``"whole_word"``: every word (a token plus its ``##`` continuation pieces) is selected with probability
  ``prob``, all its pieces together, so ``prob`` of the tokens are selected in expectation.
- ``"span"`` (SpanBERT): span lengths in words ~ Geometric(``span_p``) truncated to ``1..span_max``
  (mean 3.8 for p = 0.2, max 10), each at a random starting word, until ``prob`` of the tokens are covered.

Selected tokens are replaced by ``[MASK]`` 80% of the time, a random token 10% and kept 10% (decided per
token, or per span for spans, as SpanBERT does). Every example with at least one maskable token gets at
least one selection (as UNITER does), so short captions always give an MLM target.

Labels use ``IGNORE_INDEX`` (-100) at unselected positions, the convention of ``F.cross_entropy``.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

IGNORE_INDEX = -100
TEXT_MASKING_SCHEMES = ("token", "whole_word", "span")


def span_length_probs(p: float = 0.2, max_len: int = 10) -> np.ndarray:
    """SpanBERT's span-length distribution: Geometric(``p``) on ``1..max_len``, renormalised; ``(max_len,)``."""
    probs = p * (1.0 - p) ** np.arange(max_len)
    return probs / probs.sum()


def sample_span_lengths(rng: np.random.Generator, size: int, p: float = 0.2, max_len: int = 10) -> np.ndarray:
    """Draw ``(size,)`` span lengths from :func:`span_length_probs` (mean 3.8 for p = 0.2, max 10)."""
    return rng.choice(np.arange(1, max_len + 1), size=size, p=span_length_probs(p, max_len)).astype(np.int64)


def _words(maskable: np.ndarray, word_start: np.ndarray) -> List[np.ndarray]:
    """Positions of each word: a maskable token that starts a word plus the continuation pieces after it."""
    words: List[List[int]] = []
    for pos in np.flatnonzero(maskable).tolist():
        if word_start[pos] or not words or words[-1][-1] != pos - 1:
            words.append([pos])
        else:
            words[-1].append(pos)
    return [np.asarray(w, dtype=np.int64) for w in words]


def _select_spans(words: List[np.ndarray], budget: int, rng: np.random.Generator, p: float, max_len: int
                  ) -> List[np.ndarray]:
    taken = np.zeros(len(words), dtype=bool)
    spans: List[np.ndarray] = []
    covered = 0
    for _ in range(100):  # attempts; short texts fill their budget in one or two
        if covered >= budget or taken.all():
            break
        length = int(sample_span_lengths(rng, 1, p, max_len)[0])
        start = int(rng.integers(len(words)))
        stop = min(start + length, len(words))
        if taken[start:stop].any():
            continue
        size = sum(len(words[i]) for i in range(start, stop))
        if covered and covered + size > budget:
            continue
        taken[start:stop] = True
        spans.append(np.concatenate(words[start:stop]))
        covered += size
    return spans


def mask_text(input_ids: np.ndarray, maskable: np.ndarray, word_start: np.ndarray, rng: np.random.Generator, *,
              mask_id: int, vocab_size: int, scheme: str = "token", prob: float = 0.15, span_p: float = 0.2,
              span_max: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Mask one example's tokens.

    Args:
        input_ids: ``(T,)`` token ids.
        maskable: ``(T,)`` bool, False for [CLS], [SEP], padding and other special tokens.
        word_start: ``(T,)`` bool, True where a token starts a word (not a ``##`` continuation).
        rng: the example's generator.
        mask_id: id of ``[MASK]``.
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``.
        scheme: ``"token"``, ``"whole_word"`` or ``"span"``.
        prob: fraction of tokens to select.
        span_p: geometric parameter of span lengths (``"span"``).
        span_max: longest span in words (``"span"``).

    Returns:
        ``(masked_ids (T,), labels (T,))``; ``labels`` hold the original ids at selected positions and
        ``IGNORE_INDEX`` elsewhere.
    """
    if scheme not in TEXT_MASKING_SCHEMES:
        raise ValueError(f"text masking scheme must be one of {TEXT_MASKING_SCHEMES}, got {scheme!r}")
    input_ids = np.asarray(input_ids, dtype=np.int64)
    masked = input_ids.copy()
    labels = np.full_like(input_ids, IGNORE_INDEX)
    positions = np.flatnonzero(maskable)
    if positions.size == 0:
        return masked, labels
    if scheme == "token":
        chosen = positions[rng.random(positions.size) < prob]
        if chosen.size == 0:
            chosen = positions[rng.integers(positions.size)][None]
        groups = [chosen[i:i + 1] for i in range(chosen.size)]
    else:
        words = _words(maskable, word_start)
        if scheme == "whole_word":
            keep = rng.random(len(words)) < prob
            if not keep.any():
                keep[rng.integers(len(words))] = True
            chosen_words = [w for w, k in zip(words, keep) if k]
            groups = [pos[i:i + 1] for pos in chosen_words for i in range(pos.size)]  # 80/10/10 per token
        else:
            budget = max(1, int(round(prob * positions.size)))
            groups = _select_spans(words, budget, rng, span_p, span_max)  # 80/10/10 per span
    for group in groups:
        labels[group] = input_ids[group]
        action = rng.random()
        if action < 0.8:
            masked[group] = mask_id
        elif action < 0.9:
            masked[group] = rng.integers(vocab_size, size=group.size)
    return masked, labels


def mask_regions(num_regions: int, rng: np.random.Generator, prob: float = 0.15) -> np.ndarray:
    """Select regions to mask: each with probability ``prob``, at least one when there are any; ``(N,)`` bool."""
    chosen = rng.random(num_regions) < prob
    if num_regions and not chosen.any():
        chosen[rng.integers(num_regions)] = True
    return chosen
