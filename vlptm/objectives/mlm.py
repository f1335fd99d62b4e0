"""Masked language modelling: predict masked tokens from the text and the (unmasked) regions.

Shape legend: B batch, T text tokens, H hidden size, V vocabulary, M masked tokens in the batch.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from vlptm.objectives._dist import global_mean
from vlptm.objectives.masking import IGNORE_INDEX


class MlmHead(nn.Module):
    """BERT's prediction head: ``dense -> GELU -> LayerNorm -> decoder``, the decoder tied to the word embeddings.

    Args:
        hidden_size: H.
        vocab_size: V.
        word_embeddings: the encoder's ``(V, H)`` input embedding, shared with the decoder when given.
        eps: LayerNorm epsilon.
    """

    def __init__(self, hidden_size: int, vocab_size: int, word_embeddings: Optional[nn.Embedding] = None,
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if word_embeddings is not None:
            self.decoder.weight = word_embeddings.weight

    def forward(self, hidden: Tensor) -> Tensor:
        """``(..., H)`` states -> ``(..., V)`` logits."""
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class MaskedLanguageModeling(nn.Module):
    """MLM loss and accuracy over the masked positions of a batch.

    Args:
        hidden_size: H.
        vocab_size: V.
        word_embeddings: tie the decoder to these embeddings (``encoder.get_input_embeddings()``).

    Example:
        >>> import torch
        >>> mlm = MaskedLanguageModeling(32, 100)
        >>> labels = torch.full((2, 5), -100); labels[0, 1] = 7
        >>> sorted(mlm(torch.randn(2, 5, 32), labels))
        ['mlm', 'mlm_acc']
    """

    def __init__(self, hidden_size: int, vocab_size: int, word_embeddings: Optional[nn.Embedding] = None) -> None:
        super().__init__()
        self.head = MlmHead(hidden_size, vocab_size, word_embeddings)

    def forward(self, text_hidden: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """Score the masked tokens.

        Args:
            text_hidden: ``(B, T, H)`` encoder states of the masked text.
            labels: ``(B, T)`` original ids at masked positions, ``IGNORE_INDEX`` elsewhere.

        Returns:
            ``{"mlm": cross-entropy over the M masked tokens, "mlm_acc": their top-1 accuracy (detached)}``.
        """
        selected = labels != IGNORE_INDEX  # (B, T)
        logits = self.head(text_hidden[selected]).float()  # (M, V)
        targets = labels[selected]  # (M,)
        losses = F.cross_entropy(logits, targets, reduction="none")  # (M,)
        accuracy = (logits.argmax(-1) == targets).float().mean() if targets.numel() else losses.new_zeros(())
        return {"mlm": global_mean(losses), "mlm_acc": accuracy.detach()}
