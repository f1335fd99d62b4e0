"""Image-text contrastive learning with a learnable temperature, across distributed ranks.

Text and image embeddings come from the encoder's unimodal passes (text only / regions only). With
``pooling="mean"`` the mean of each pass's states is projected to ``E`` dimensions and L2-normalised: one
vector per text and per image, the image-text score is their dot product. With ``pooling="regions"`` (late
interaction over regions) an image is a *set* of ``R`` vectors, one per region: each is the concatenation of
the image's global (mean) vector and that region's own projected state, and the text is the concatenation of
two projections of its mean state. The score is the maximum over the image's vectors:
``(cos(text_g, image_g) + max_r cos(text_l, region_r)) / 2``. A caption that names one object of a busy image
then matches that object's region instead of the diluted image mean. These are the embeddings a retrieval
index stores (one row per region in the second case).

The loss is the symmetric InfoNCE of CLIP over every pair of the global batch: embeddings are all-gathered
from every rank, only this rank's rows keep their gradient, and the gradient is scaled by the world size so
that DDP's gradient averaging reproduces the single-process gradient exactly.

Shape legend: b local batch, G global batch (all ranks), H hidden size, E projection size, F output
embedding size (E, or 2E with region pooling), R regions.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlptm.objectives._dist import gather_with_local_grad, global_max, scale_grad, world_size

POOLINGS = ("mean", "regions")


def pad_sets(sets: Tensor, rows: int) -> Tensor:
    """``(B, R, F)`` region sets padded to ``rows`` rows by repeating each set's first row: a repeated row
    leaves the maximum over a set unchanged, so padded sets score as the originals."""
    extra = rows - sets.shape[1]
    return sets if extra <= 0 else torch.cat([sets, sets[:, :1].expand(-1, extra, -1)], dim=1)  # (B, rows, F)


def concat_image_embeddings(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate batches of image embeddings: ``(b_i, F)`` -> ``(B, F)``; region sets ``(b_i, R_i, F)`` are
    first padded to the largest ``R_i`` (:func:`pad_sets`) -> ``(B, R, F)``."""
    if not parts or parts[0].dim() == 2:
        return torch.cat(list(parts))
    rows = max(part.shape[1] for part in parts)
    return torch.cat([pad_sets(part, rows) for part in parts])


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
                 max_logit_scale: float = 100.0, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"ITC pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.text_proj = nn.Linear(hidden_size, embed_dim)
        self.image_proj = nn.Linear(hidden_size, embed_dim)
        if pooling == "regions":
            self.text_local_proj = nn.Linear(hidden_size, embed_dim)
            self.region_proj = nn.Linear(hidden_size, embed_dim)
        self.out_dim = embed_dim * (2 if pooling == "regions" else 1)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def multi_vector(self) -> bool:
        """Whether an image is a set of vectors (one per region) rather than one vector."""
        return self.pooling == "regions"

    def embed_text(self, pooled: Tensor) -> Tensor:
        """``(B, H)`` summary of a text-only pass (mean state) -> ``(B, F)`` unit-norm text embeddings."""
        global_part = F.normalize(self.text_proj(pooled).float(), dim=-1)  # (B, E)
        if not self.multi_vector:
            return global_part
        local_part = F.normalize(self.text_local_proj(pooled).float(), dim=-1)  # (B, E)
        return torch.cat([global_part, local_part], dim=-1) / math.sqrt(2.0)  # (B, 2E)

    def embed_image(self, pooled: Tensor, region_states: Optional[Tensor] = None,
                    region_mask: Optional[Tensor] = None) -> Tensor:
        """Unit-norm image embeddings of a regions-only pass.

        Args:
            pooled: ``(B, H)`` the pass's mean region state.
            region_states: ``(B, R, H)`` every region's state (needed with region pooling).
            region_mask: ``(B, R)`` 1 for real regions (default: all real).

        Returns:
            ``(B, E)`` with mean pooling; ``(B, R, 2E)`` with region pooling, where padded regions repeat the
            image's first vector (so a maximum over the set never picks padding).
        """
        global_part = F.normalize(self.image_proj(pooled).float(), dim=-1)  # (B, E)
        if not self.multi_vector:
            return global_part
        if region_states is None:
            raise ValueError("region pooling needs the region states of the regions-only pass")
        local_part = F.normalize(self.region_proj(region_states).float(), dim=-1)  # (B, R, E)
        if region_mask is not None:
            real = region_mask.bool()[..., None]  # (B, R, 1)
            local_part = torch.where(real, local_part, local_part[:, :1])  # (B, R, E)
        global_part = global_part[:, None].expand(-1, local_part.shape[1], -1)  # (B, R, E)
        return torch.cat([global_part, local_part], dim=-1) / math.sqrt(2.0)  # (B, R, 2E)

    @staticmethod
    def similarity(text_emb: Tensor, image_emb: Tensor) -> Tensor:
        """``(Bt, F)`` x ``(Bi, F)`` or ``(Bi, R, F)`` -> ``(Bt, Bi)`` scores (max over an image's vectors)."""
        if image_emb.dim() == 2:
            return text_emb @ image_emb.t()
        images, rows, dim = image_emb.shape
        scores = text_emb @ image_emb.reshape(images * rows, dim).t()  # (Bt, Bi * R)
        return scores.view(-1, images, rows).amax(dim=-1)  # (Bt, Bi)

    def logits(self, text_emb: Tensor, image_emb: Tensor) -> Tensor:
        """``(Bt, F)`` x ``(Bi, F)`` (or ``(Bi, R, F)``) -> ``(Bt, Bi)`` scaled similarities."""
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * self.similarity(text_emb, image_emb)

    def forward(self, text_emb: Tensor, image_emb: Tensor, pair_ids: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Symmetric contrastive loss over the global batch.

        Args:
            text_emb: ``(b, F)`` this rank's text embeddings.
            image_emb: ``(b, F)`` (or ``(b, R, F)``) this rank's image embeddings; pair i is
                ``(text_emb[i], image_emb[i])``.
            pair_ids: optional ``(b,)`` image ids; other captions of the same image are not counted as
                negatives (their logits are dropped from the softmax).

        Returns:
            ``{"itc": loss, "itc_acc": text-to-image top-1 accuracy in the global batch,
            "itc_temperature": current temperature}`` (the last two detached).
        """
        all_text, _ = gather_with_local_grad(text_emb)  # (G, F)
        if image_emb.dim() == 3:  # region sets: every rank pads its sets to the largest R first
            image_emb = pad_sets(image_emb, global_max(image_emb.shape[1]))  # (b, R', F)
        all_image, _ = gather_with_local_grad(image_emb)  # (G, F) or (G, R', F)
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
