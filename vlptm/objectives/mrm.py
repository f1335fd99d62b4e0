"""Masked region modelling: MRFR (feature regression), MRC (detector argmax class), MRC-kl (soft labels).

The masked regions' input features were zeroed and replaced by the encoder's learned mask embedding
(``region_masked`` in the batch); these heads predict what was hidden from the output states.

Shape legend: B batch, R regions, H hidden size, D region feature dim, C detector classes (index 0 =
background), M masked regions in the batch.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vlptm.objectives._dist import global_mean

MRM_TASKS = ("mrfr", "mrc", "mrc_kl")


class RegionPredictionHead(nn.Module):
    """``dense -> GELU -> LayerNorm -> linear`` from H to ``out_features`` (UNITER's region heads)."""

    def __init__(self, hidden_size: int, out_features: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.out = nn.Linear(hidden_size, out_features)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.norm(F.gelu(self.dense(hidden))))


class MaskedRegionModeling(nn.Module):
    """The three MRM losses over the masked regions of a batch; which run is chosen per call.

    Args:
        hidden_size: H.
        feat_dim: D, regressed by MRFR.
        num_classes: C of the detector's class distribution (MRC and MRC-kl); 0 when the features carry no
            class probabilities (grid features), which leaves only MRFR available.

    Example:
        >>> import torch
        >>> mrm = MaskedRegionModeling(32, feat_dim=16, num_classes=5)
        >>> masked = torch.zeros(2, 3, dtype=torch.bool); masked[:, 0] = True
        >>> probs = torch.softmax(torch.randn(2, 3, 5), -1)
        >>> sorted(mrm(torch.randn(2, 3, 32), masked, torch.randn(2, 3, 16), probs))
        ['mrc', 'mrc_acc', 'mrc_kl', 'mrfr']
    """

    def __init__(self, hidden_size: int, feat_dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_head = RegionPredictionHead(hidden_size, feat_dim)
        self.class_head = RegionPredictionHead(hidden_size, num_classes) if num_classes else None

    def forward(self, region_hidden: Tensor, region_masked: Tensor, region_feats: Tensor,
                cls_probs: Optional[Tensor] = None, tasks: Sequence[str] = MRM_TASKS) -> Dict[str, Tensor]:
        """Compute the requested MRM losses.

        Args:
            region_hidden: ``(B, R, H)`` encoder states (masked input).
            region_masked: ``(B, R)`` bool, the masked regions (padding must be False).
            region_feats: ``(B, R, D)`` the original, unmasked features (MRFR targets).
            cls_probs: ``(B, R, C)`` the detector's class probabilities (MRC targets); needed by MRC tasks.
            tasks: any of ``"mrfr"``, ``"mrc"``, ``"mrc_kl"``.

        Returns:
            ``mrfr``: mean over masked regions of the squared error summed over D, divided by D (MSE);
            ``mrc``: cross-entropy against ``argmax cls_probs``, with ``mrc_acc``;
            ``mrc_kl``: ``KL(cls_probs || softmax(prediction))``.

        Raises:
            ValueError: unknown task, or an MRC task without ``cls_probs`` / class head.
        """
        unknown = set(tasks) - set(MRM_TASKS)
        if unknown:
            raise ValueError(f"unknown MRM task(s) {sorted(unknown)}; choose from {MRM_TASKS}")
        selected = region_masked.bool()  # (B, R)
        hidden = region_hidden[selected]  # (M, H)
        out: Dict[str, Tensor] = {}
        if "mrfr" in tasks:
            prediction = self.feature_head(hidden).float()  # (M, D)
            target = region_feats[selected].float()  # (M, D)
            out["mrfr"] = global_mean(F.mse_loss(prediction, target, reduction="none").mean(-1))
        if "mrc" in tasks or "mrc_kl" in tasks:
            if self.class_head is None or cls_probs is None:
                raise ValueError("MRC needs the detector's class probabilities (cls_probs); these features have "
                                 "none (grid features?): use mrfr only")
            logits = self.class_head(hidden).float()  # (M, C)
            soft = cls_probs[selected].float()  # (M, C)
            if "mrc" in tasks:
                labels = soft.argmax(-1)  # (M,)
                out["mrc"] = global_mean(F.cross_entropy(logits, labels, reduction="none"))
                acc = (logits.argmax(-1) == labels).float().mean() if labels.numel() else logits.new_zeros(())
                out["mrc_acc"] = acc.detach()
            if "mrc_kl" in tasks:
                log_probs = F.log_softmax(logits, dim=-1)  # (M, C)
                kl = F.kl_div(log_probs, soft, reduction="none").sum(-1)  # (M,)
                out["mrc_kl"] = global_mean(kl)
        return out

