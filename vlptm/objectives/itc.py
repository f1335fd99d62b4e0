"""Image-text contrastive learning with a learnable temperature, across distributed ranks.

Text and image embeddings come from the encoder's unimodal passes (text only / regions only): the mean
of each pass's states is projected to ``E`` dimensions and L2-normalised. These are the embeddings a retrieval
index stores. The loss is the symmetric InfoNCE of CLIP over every pair of the global batch: embeddings are
all-gathered from every rank, only this rank's rows keep their gradient, and the gradient is scaled by the
world size so that DDP's gradient averaging reproduces the single-process gradient exactly.

Shape legend: b local batch, G global batch (all ranks), H hidden size, E embedding size.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlptm.objectives._dist import gather_with_local_grad, scale_grad, world_size


class ImageTextContrastive(nn.Module):
    """Projections of the pooled unimodal states, a learnable temperature and the contrastive loss.

    Args:
        hidden_size: H.
        embed_dim: E, the size of the retrieval embeddings.
        init_temperature: initial softmax temperature (CLIP: 0.07).
        max_logit_scale: cap on ``1 / temperature`` (CLIP: 100).

    Example:
        >>> import torch
        >>> itc = ImageTextContrastive(32, embed_dim=16)
        >>> t, i = itc.embed_text(torch.randn(4, 32)), itc.embed_image(torch.randn(4, 32))
        >>> sorted(itc(t, i))
        ['itc', 'itc_acc', 'itc_temperature']
    """

    def __init__(self, hidden_size: int, embed_dim: int = 256, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0) -> None:
        super().__init__()
        self.text_proj = nn.Linear(hidden_size, embed_dim)
        self.image_proj = nn.Linear(hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    def embed_text(self, pooled: Tensor) -> Tensor:
        """``(B, H)`` summary of a text-only pass (mean state) -> ``(B, E)`` unit-norm text embeddings."""
        return F.normalize(self.text_proj(pooled).float(), dim=-1)

    def embed_image(self, pooled: Tensor) -> Tensor:
        """``(B, H)`` summary of a regions-only pass (mean state) -> ``(B, E)`` unit-norm image embeddings."""
        return F.normalize(self.image_proj(pooled).float(), dim=-1)

    def logits(self, text_emb: Tensor, image_emb: Tensor) -> Tensor:
        """``(Bt, E)`` x ``(Bi, E)`` -> ``(Bt, Bi)`` scaled cosine similarities."""
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * text_emb @ image_emb.t()

    def forward(self, text_emb: Tensor, image_emb: Tensor, pair_ids: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Symmetric contrastive loss over the global batch.

        Args:
            text_emb: ``(b, E)`` this rank's text embeddings.
            image_emb: ``(b, E)`` this rank's image embeddings; pair i is ``(text_emb[i], image_emb[i])``.
            pair_ids: optional ``(b,)`` image ids; other captions of the same image are not counted as
                negatives (their logits are dropped from the softmax).

        Returns:
            ``{"itc": loss, "itc_acc": text-to-image top-1 accuracy in the global batch,
            "itc_temperature": current temperature}`` (the last two detached).
        """
        all_text, _ = gather_with_local_grad(text_emb)  # (G, E)
        all_image, _ = gather_with_local_grad(image_emb)  # (G, E)
        logits = self.logits(all_text, all_image)  # (G, G)
        size = logits.shape[0]
        targets = torch.arange(size, device=logits.device)  # (G,)
        if pair_ids is not None:
            all_ids, _ = gather_with_local_grad(pair_ids)  # (G,)
            duplicate = (all_ids[:, None] == all_ids[None, :]) & ~torch.eye(size, dtype=torch.bool,
                                                                               device=logits.device)
            logits = logits.masked_fill(duplicate, float("-inf"))  # (G, G)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return {
            "itc": scale_grad(loss, float(world_size())),
            "itc_acc": accuracy.detach(),
            "itc_temperature": (1.0 / self.logit_scale.clamp(max=self.max_log_scale).exp()).detach(),
        }
