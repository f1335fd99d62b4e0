"""Image-text matching: does this caption describe this image? Random and hard negatives.

Random negatives are drawn by the dataset (the image or the text of a pair swapped with another
example's with probability 0.5, see :class:`vlptm.data.pretrain.PretrainDataset`); hard negatives are
sampled here from the in-batch image-text similarity (ALBEF): for each text an image it scores highly
but that is not its own, and for each image such a text.

Shape legend: B batch, H hidden size.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlptm.objectives._dist import global_mean


class ItmHead(nn.Module):
    """``Linear(H, 2)`` on the pooled joint state: logit 1 = matched."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, H)`` -> ``(B, 2)`` logits."""
        return self.classifier(pooled)


class ImageTextMatching(nn.Module):
    """ITM loss and accuracy.

    Args:
        hidden_size: H.

    Example:
        >>> import torch
        >>> itm = ImageTextMatching(32)
        >>> sorted(itm(torch.randn(4, 32), torch.tensor([1, 0, 1, 0])))
        ['itm', 'itm_acc']
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.head = ItmHead(hidden_size)

    def score(self, pooled: Tensor) -> Tensor:
        """``(B, H)`` pooled joint states -> ``(B,)`` matching probability (for re-ranking)."""
        return self.head(pooled).float().softmax(-1)[:, 1]

    def forward(self, pooled: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """Args:
            pooled: ``(B, H)`` pooled states of the (possibly mismatched) pairs.
            labels: ``(B,)`` 1 = matched, 0 = mismatched.

        Returns:
            ``{"itm": cross-entropy, "itm_acc": accuracy (detached)}``.
        """
        logits = self.head(pooled).float()  # (B, 2)
        labels = labels.long()
        losses = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"itm": global_mean(losses), "itm_acc": accuracy.detach()}


class NoNegativeCandidates(ValueError):
    """Some pair of the batch has no allowed in-batch negative (e.g. the batch holds a single image)."""


def sample_hard_negatives(similarity: Tensor, pair_ids: Optional[Tensor] = None,
                          generator: Optional[torch.Generator] = None,
                          exclude: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Sample one hard negative per row and per column of an in-batch similarity matrix.

    Args:
        similarity: ``(B, B)`` text-to-image similarity (row i = text i, column j = image j); pair i is
            text i with image i.
        pair_ids: optional ``(B,)`` image ids; pairs sharing an image are never each other's negative.
        generator: RNG for the sampling (default: torch's global RNG).
        exclude: optional ``(B, B)`` bool, symmetric: pairs ``(i, j)`` that are never each other's negative
            (e.g. text i and text j are the same caption, so image j matches text i).

    Returns:
        ``(image_for_text (B,), text_for_image (B,))`` indices, drawn with probability
        ``softmax(similarity)`` over the allowed candidates. Requires ``B >= 2`` and at least two images.

    Raises:
        NoNegativeCandidates: a row has no allowed candidate (e.g. the batch holds a single image).
    """
    sim = similarity.detach().float()  # (B, B)
    size = sim.shape[0]
    same = torch.eye(size, dtype=torch.bool, device=sim.device)  # (B, B)
    if pair_ids is not None:
        same = same | (pair_ids[:, None] == pair_ids[None, :])
    if exclude is not None:
        same = same | exclude
    if same.all(dim=1).any():
        raise NoNegativeCandidates("hard negatives need, for every pair, another image with another caption "
                                   "in the batch")
    weights_t2i = sim.masked_fill(same, float("-inf")).softmax(dim=1)  # (B, B)
    weights_i2t = sim.t().masked_fill(same, float("-inf")).softmax(dim=1)  # (B, B)
    image_for_text = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)  # (B,)
    text_for_image = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)  # (B,)
    return image_for_text, text_for_image
