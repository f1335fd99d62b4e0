"""The attribute head of the region extractor (bottom-up-attention style).

Anderson et al. (2018) predict attributes from the RoI feature concatenated with a learned embedding of the
object class: the ground-truth class while training, the predicted class at inference. Here the
attributes are multi-label: one sigmoid per attribute, trained with binary cross-entropy on foreground RoIs
only. An object may carry any number of attributes (Visual Genome's objects carry 0-16; each generated
scene object carries one colour and one size), and ``attr_probs[i, a]`` is the probability that region ``i``
has attribute ``a`` on its own. To read one attribute *type* (e.g. the colour), take the argmax over that
type's columns.

Letters: R RoIs, D RoI feature size, C classes incl. background, A attributes.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttributeHead", "attribute_loss"]


class AttributeHead(nn.Module):
    """Attributes from ``[RoI feature; class embedding]`` through one hidden layer.

    Args:
        in_features: D, the RoI feature size (the box head's output).
        num_classes: C, detector classes including background (index 0).
        num_attributes: A.
        class_embed_dim: size of the class embedding (256 in bottom-up attention).
        hidden_dim: hidden layer size (512 in bottom-up attention).

    Example:
        >>> head = AttributeHead(in_features=16, num_classes=4, num_attributes=5)
        >>> head(torch.randn(3, 16), torch.tensor([1, 2, 3])).shape
        torch.Size([3, 5])
    """

    def __init__(self, in_features: int, num_classes: int, num_attributes: int, class_embed_dim: int = 256,
                 hidden_dim: int = 512) -> None:
        super().__init__()
        self.num_attributes = num_attributes
        self.class_embed = nn.Embedding(num_classes, class_embed_dim)
        self.fc = nn.Linear(in_features + class_embed_dim, hidden_dim)
        self.logits = nn.Linear(hidden_dim, num_attributes)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Attribute logits ``(R, A)`` from features ``(R, D)`` and class labels ``(R,)`` (long)."""
        x = torch.cat([features, self.class_embed(labels).to(features.dtype)], dim=1)  # (R, D + E)
        return self.logits(F.relu(self.fc(x)))  # (R, A)


def attribute_loss(logits: Tensor, targets: List[Tensor]) -> Tensor:
    """Binary cross-entropy of attribute logits ``(R, A)`` against multi-hot targets.

    ``targets`` is the per-image list of ``(R_i, A)`` multi-hot rows (concatenated in the same order as
    ``logits``). Zero RoIs give a zero loss that still depends on the head's parameters.
    """
    target = torch.cat(targets, dim=0).to(logits.dtype)  # (R, A)
    if target.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, target)
