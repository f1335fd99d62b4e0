"""Shared Transformer blocks of both encoders: embeddings, attention, FFN, layers, pooler.

Attention runs on ``torch.nn.functional.scaled_dot_product_attention`` with an additive key-padding mask.
An explicit matmul-softmax-matmul path serves attention maps (``output_attentions``) and, with the default
``attention_backend="auto"``, CPU passes that need gradients, where it is measured faster than SDPA's CPU
backward (see :func:`attend`). Query, key and value projections are one fused ``(3H, H)`` matrix (one GEMM
instead of three); the interop loaders concatenate the peers' separate ``query``/``key``/``value`` weights
into it. Position-wise work (Linear, FFN, LayerNorm, dropout) runs on the real tokens only (:class:`Packing`).

Shape legend: B batch, T text tokens, R regions, L any sequence length, n real (non-padded) tokens,
H hidden size, N heads, d = H / N head size, D region feature dim, P region position dim, I FFN inner size.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Additive bias for padded keys: exp() of it underflows to exactly 0 in fp32 and bf16 softmax, and it stays
# finite in fp16, so a query whose keys are all padding gets uniform attention instead of NaN.
MASK_BIAS = -1.0e4

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype activations are kept in: the autocast dtype when autocast is on for ``x``'s device.

    Under autocast the encoders cast their embeddings to it, so the residual stream, LayerNorm outputs and
    dropout masks stay in bf16/fp16 (LayerNorm still accumulates in fp32) instead of mixing fp32 and bf16
    in every residual add; weights and their gradients stay fp32.
    """
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def padding_bias(mask: Tensor) -> Tensor:
    """Turn a ``(B, L)`` 1/0 key mask into the additive ``(B, 1, 1, L)`` bias every attention takes."""
    return (1.0 - mask.to(torch.float32))[:, None, None, :] * MASK_BIAS  # (B, 1, 1, L)


def keep_mask(shape: Tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A dropout keep-mask of ``shape`` in ``like``'s dtype: 1 with probability ``1 - p``, else 0.

    On CPU it draws 64 random bits per four elements and thresholds 16-bit chunks (keep probability exact to
    1/65536), about five times faster than ``bernoulli_``; elsewhere it uses ``bernoulli_``.
    """
    if like.device.type != "cpu":
        return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - p)
    numel = math.prod(shape)
    bits = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(2 ** 63), None)
    chunks = bits.view(torch.int16)[:numel].view(shape)  # uniform over [-32768, 32767]
    mask = torch.empty(shape, dtype=like.dtype)
    return torch.ge(chunks, round(-32768 + p * 65536), out=mask)  # compare and cast in one pass


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout`` with the fast CPU keep-mask of :func:`keep_mask`."""
    if not training or p == 0.0:
        return x
    return x * keep_mask(tuple(x.shape), p, x).mul_(1.0 / (1.0 - p))


def residual_dropout(residual: Tensor, x: Tensor, p: float, training: bool) -> Tensor:
    """``residual + dropout(x)`` in one fused ``addcmul`` when training."""
    if not training or p == 0.0:
        return residual + x
    return torch.addcmul(residual, x, keep_mask(tuple(x.shape), p, x), value=1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` drawing its mask with :func:`keep_mask`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _explicit_path(q: Tensor, backend: str) -> bool:
    if backend == "explicit":
        return True
    if backend == "sdpa":
        return False
    # "auto": on CPU, SDPA's backward is the slower one (with dropout it falls back to its own unfused math
    # path; without, the flash kernel's bf16 backward is ~4x slower than two matmuls and a softmax here).
    return q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float, return_probs: bool = False,
           backend: str = "auto") -> Tuple[Tensor, Optional[Tensor]]:
    """Scaled dot-product attention of ``(B, N, Lq, d)`` queries on ``(B, N, Lk, d)`` keys/values.

    Args:
        bias: additive key bias, ``(B, 1, 1, Lk)`` (see :func:`padding_bias`).
        dropout_p: dropout on the attention probabilities (pass 0 in eval).
        return_probs: also return the ``(B, N, Lq, Lk)`` probabilities (explicit softmax path, fp32 softmax).
        backend: "sdpa" (``F.scaled_dot_product_attention``), "explicit" (matmul-softmax-matmul) or "auto":
            SDPA except for CPU autograd passes (see :class:`~vlptm.models.config.EncoderConfig`).

    Returns:
        ``(context (B, N, Lq, d), probs or None)``.
    """
    bias = bias.to(q.dtype)
    if not return_probs and not _explicit_path(q, backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p), None
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.shape[-1])).add_(bias)  # (B, N, Lq, Lk)
    # Softmax in fp32 even under bf16 autocast: more exact, and on CPU the fp32 kernels (forward and backward)
    # on these short rows are faster than the bf16 ones, cast included.
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # (B, N, Lq, Lk)
    if dropout_p > 0.0:
        context = torch.matmul(probs * keep_mask(tuple(probs.shape), dropout_p, probs), v)  # (B, N, Lq, d)
        context = context.mul_(1.0 / (1.0 - dropout_p))
    else:
        context = torch.matmul(probs, v)  # (B, N, Lq, d)
    return context, (probs if return_probs else None)


class TextEmbeddings(nn.Module):
    """BERT embeddings: ``LN(word + position + token_type)`` then dropout.

    Args:
        vocab_size: WordPiece vocabulary size.
        hidden_size: H.
        max_positions: longest text.
        type_vocab_size: number of token types.
        eps: LayerNorm epsilon.
        dropout: dropout probability.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int,
                 eps: float, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = Dropout(dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """``(B, T)`` ids and token types -> ``(B, T, H)``."""
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {length} tokens exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        positions = torch.arange(length, device=input_ids.device)  # (T,)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))  # (B, T, H)
        return self.dropout(self.norm(x))


class RegionEmbeddings(nn.Module):
    """Region features and box positions -> ``(B, R, H)`` embeddings, in one of three peers' styles.

    - ``"uniter"``: ``LN(LN(W_f f) + LN(W_p p) + t)`` where ``t`` is the caller's modality (token-type)
      embedding; UNITER takes row 1 of the text token-type table.
    - ``"lxmert"``: ``(LN(W_f f) + LN(W_p p)) / 2``.
    - ``"visualbert"``: ``LN_text(W_f f + e)`` with a learned vector ``e`` (VisualBERT's visual position
      row 0 plus visual token-type row 1) and the text embeddings' LayerNorm passed in by the caller; no
      box positions.

    Masked regions (``masked`` true) have their features replaced by a learned ``(D,)`` mask embedding,
    i.e. zeroed and the mask embedding added, as UNITER's masked region modelling does.

    Args:
        feat_dim: D.
        pos_dim: P (0 for the "visualbert" style).
        hidden_size: H.
        style: "uniter", "lxmert" or "visualbert".
        eps: LayerNorm epsilon.
        dropout: dropout probability on the output.
    """

    def __init__(self, feat_dim: int, pos_dim: int, hidden_size: int, style: str, eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.style = style
        self.feat_dim, self.pos_dim = feat_dim, pos_dim
        self.feat_proj = nn.Linear(feat_dim, hidden_size)
        self.mask_embedding = nn.Parameter(torch.zeros(feat_dim))
        if style in ("uniter", "lxmert"):
            self.feat_norm = nn.LayerNorm(hidden_size, eps=eps)
            self.pos_proj = nn.Linear(pos_dim, hidden_size)
            self.pos_norm = nn.LayerNorm(hidden_size, eps=eps)
        if style == "uniter":
            self.norm = nn.LayerNorm(hidden_size, eps=eps)
        if style == "visualbert":
            self.modality_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.dropout = Dropout(dropout)

    def forward(self, feats: Tensor, pos: Optional[Tensor], masked: Optional[Tensor] = None,
                type_embedding: Optional[Tensor] = None, shared_norm: Optional[nn.LayerNorm] = None) -> Tensor:
        """Embed regions.

        Args:
            feats: ``(B, R, D)`` region features.
            pos: ``(B, R, P)`` box positions (ignored by the "visualbert" style).
            masked: optional ``(B, R)`` bool, regions whose features are replaced by the mask embedding.
            type_embedding: ``(H,)`` modality embedding ("uniter" style).
            shared_norm: the text embeddings' LayerNorm ("visualbert" style).

        Returns:
            ``(B, R, H)``.
        """
        if feats.shape[-1] != self.feat_dim:
            raise ValueError(f"region_feats last dim {feats.shape[-1]} != region_feat_dim {self.feat_dim}")
        if masked is not None:
            feats = torch.where(masked.bool()[..., None], self.mask_embedding.to(feats.dtype), feats)  # (B, R, D)
        if self.style == "visualbert":
            x = shared_norm(self.feat_proj(feats) + self.modality_embedding)  # (B, R, H)
            return self.dropout(x)
        if pos is None:
            raise ValueError(f"region_pos (B, R, {self.pos_dim}) is required by the {self.style!r} region embedding")
        if pos.shape[-1] != self.pos_dim:
            raise ValueError(f"region_pos last dim {pos.shape[-1]} != region_pos_dim {self.pos_dim}")
        x = self.feat_norm(self.feat_proj(feats)) + self.pos_norm(self.pos_proj(pos))  # (B, R, H)
        if self.style == "lxmert":
            return self.dropout(x / 2)
        return self.dropout(self.norm(x + type_embedding))


class Packing:
    """The real (non-padded) positions of a ``(B, L)`` mask, so position-wise work skips padding.

    Layers take tokens as a packed ``(n, C)`` matrix of the real positions only (``n`` = number of ones in
    the mask): every Linear, FFN, LayerNorm and dropout runs on real tokens, and only attention scatters
    them back to the padded ``(B, L, C)`` layout (padding rows zero, masked out as keys by ``bias``).
    Without padding, packing and unpacking are free reshapes.

    Args:
        mask: ``(B, L)``, 1 = real position.
    """

    def __init__(self, mask: Tensor) -> None:
        self.batch, self.length = mask.shape
        self.bias = padding_bias(mask)  # (B, 1, 1, L)
        keep = mask.reshape(-1) != 0  # (B*L,)
        self.index: Optional[Tensor] = None if bool(keep.all()) else keep.nonzero().squeeze(1)  # (n,)

    def pack(self, x: Tensor) -> Tensor:
        """``(B, L, C)`` -> ``(n, C)``."""
        flat = x.reshape(self.batch * self.length, x.shape[-1])  # (B*L, C)
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """``(n, C)`` -> ``(B, L, C)`` with zero rows at padded positions."""
        if self.index is not None:
            x = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)  # (B*L, C)
        return x.view(self.batch, self.length, x.shape[-1])


class Attention(nn.Module):
    """Multi-head attention with a post-LN residual: ``LN(x + dropout(W_o attn(x, ctx)))``.

    One ``qkv`` Linear of shape ``(3H, H)`` holds the query, key and value projections. The same block
    serves self-attention (:meth:`forward`) and LXMERT's two-way cross-attention with shared weights
    (:meth:`bidirectional`). Tokens come packed (see :class:`Packing`).

    Args:
        hidden_size: H.
        num_heads: N.
        attention_dropout: dropout on attention probabilities.
        hidden_dropout: dropout on the output projection.
        eps: LayerNorm epsilon.
        backend: attention kernel, "auto", "sdpa" or "explicit" (see :func:`attend`).
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float, hidden_dropout: float,
                 eps: float, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.backend = backend
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.attention_dropout, self.hidden_dropout = attention_dropout, hidden_dropout

    def _heads(self, qkv: Tensor, packing: Packing) -> Tensor:
        x = packing.unpack(qkv)  # (B, L, 3H)
        batch, length, _ = x.shape
        return x.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, N, L, d)

    def _merge(self, context: Tensor, packing: Packing) -> Tensor:
        batch, _, length, _ = context.shape
        return packing.pack(context.transpose(1, 2).reshape(batch, length, -1))  # (n, H)

    def _output(self, context: Tensor, residual: Tensor) -> Tensor:
        return self.norm(residual_dropout(residual, self.dense(context), self.hidden_dropout, self.training))

    def _p(self) -> float:
        return self.attention_dropout if self.training else 0.0

    def forward(self, x: Tensor, packing: Packing, return_probs: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Self-attention of packed ``(n, H)`` tokens -> ``((n, H), (B, N, L, L) probs or None)``."""
        q, k, v = self._heads(self.qkv(x), packing)  # each (B, N, L, d)
        context, probs = attend(q, k, v, packing.bias, self._p(), return_probs, self.backend)
        return self._output(self._merge(context, packing), x), probs

    def bidirectional(self, a: Tensor, a_packing: Packing, b: Tensor, b_packing: Packing,
                      return_probs: bool = False) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``a`` attends to ``b`` and ``b`` to ``a`` with the same weights (LXMERT's cross-attention).

        Both token sets go through each projection in one GEMM.

        Args:
            a: packed ``(n_a, H)``; b: packed ``(n_b, H)``; a_packing / b_packing: their packings.
            return_probs: also return the a-to-b probabilities ``(B, N, La, Lb)``.

        Returns:
            ``(a_out (n_a, H), b_out (n_b, H), a-to-b probs or None)``.
        """
        count_a = a.shape[0]
        both = torch.cat([a, b], dim=0)  # (n_a+n_b, H)
        # split (not slicing): its backward is one cat instead of a zero-filled buffer per slice
        qkv_a, qkv_b = self.qkv(both).split([count_a, b.shape[0]])  # (n_a, 3H), (n_b, 3H)
        q_a, k_a, v_a = self._heads(qkv_a, a_packing)  # each (B, N, La, d)
        q_b, k_b, v_b = self._heads(qkv_b, b_packing)  # each (B, N, Lb, d)
        ctx_a, probs = attend(q_a, k_b, v_b, b_packing.bias, self._p(), return_probs, self.backend)  # (B, N, La, d)
        ctx_b, _ = attend(q_b, k_a, v_a, a_packing.bias, self._p(), backend=self.backend)  # (B, N, Lb, d)
        context = torch.cat([self._merge(ctx_a, a_packing), self._merge(ctx_b, b_packing)], dim=0)  # (n_a+n_b, H)
        out_a, out_b = self._output(context, both).split([count_a, b.shape[0]])  # (n_a, H), (n_b, H)
        return out_a, out_b, probs


class FeedForward(nn.Module):
    """``LN(x + dropout(W_2 act(W_1 x)))``.

    Args:
        hidden_size: H.
        intermediate_size: I.
        activation: "gelu", "gelu_tanh" or "relu".
        dropout: dropout probability.
        eps: LayerNorm epsilon.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str, dropout: float,
                 eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.activation = _ACTIVATIONS[activation]
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        """``(..., H)`` -> ``(..., H)``."""
        return self.norm(residual_dropout(x, self.fc2(self.activation(self.fc1(x))), self.dropout, self.training))


class TransformerLayer(nn.Module):
    """A BERT layer: self-attention block then FFN block (post-LN).

    Args:
        hidden_size, num_heads, intermediate_size, activation: shapes and FFN activation.
        attention_dropout, hidden_dropout, eps, backend: as in :class:`Attention`.
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, activation: str,
                 attention_dropout: float, hidden_dropout: float, eps: float, backend: str = "auto") -> None:
        super().__init__()
        self.attention = Attention(hidden_size, num_heads, attention_dropout, hidden_dropout, eps, backend)
        self.ffn = FeedForward(hidden_size, intermediate_size, activation, hidden_dropout, eps)

    def forward(self, x: Tensor, packing: Packing, return_probs: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Packed ``(n, H)`` tokens -> ``((n, H), (B, N, L, L) probs or None)``."""
        x, probs = self.attention(x, packing, return_probs)
        return self.ffn(x), probs


class CrossModalLayer(nn.Module):
    """LXMERT's cross-modality layer.

    One cross-attention shared by both directions, then per-modality self-attention and FFN.

    Args: as :class:`TransformerLayer`.
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, activation: str,
                 attention_dropout: float, hidden_dropout: float, eps: float, backend: str = "auto") -> None:
        super().__init__()
        args = (hidden_size, num_heads, attention_dropout, hidden_dropout, eps, backend)
        self.cross_attention = Attention(*args)
        self.text_attention = Attention(*args)
        self.region_attention = Attention(*args)
        self.text_ffn = FeedForward(hidden_size, intermediate_size, activation, hidden_dropout, eps)
        self.region_ffn = FeedForward(hidden_size, intermediate_size, activation, hidden_dropout, eps)

    def forward(self, text: Tensor, text_packing: Packing, regions: Tensor, region_packing: Packing,
                return_probs: bool = False) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Packed ``(n_t, H)`` text and ``(n_r, H)`` regions -> updated pair and ``(B, N, T, R)`` probs."""
        text, regions, probs = self.cross_attention.bidirectional(text, text_packing, regions, region_packing,
                                                                  return_probs)
        text, _ = self.text_attention(text, text_packing)  # (n_t, H)
        regions, _ = self.region_attention(regions, region_packing)  # (n_r, H)
        return self.text_ffn(text), self.region_ffn(regions), probs


class Pooler(nn.Module):
    """``tanh(W x)`` of a ``(B, H)`` summary vector (the [CLS] state, or the region mean)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H)`` -> ``(B, H)``."""
        return torch.tanh(self.dense(x))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(B, L, H)`` over positions where the ``(B, L)`` mask is 1 (zeros for an empty row)."""
    weights = mask.to(x.dtype)[..., None]  # (B, L, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
