"""Single-stream encoder (UNITER / Unicoder-VL / VisualBERT): one Transformer over [text; regions].

Shape legend: B batch, T text tokens, R regions, H hidden size, N heads, D region feature dim,
P region position dim.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from vlptm.models.base import EncoderOutput, VisionLanguageEncoder
from vlptm.models.config import SingleStreamConfig
from vlptm.models.layers import (Packing, Pooler, TransformerLayer, autocast_dtype,
                                 masked_mean)


class SingleStreamEncoder(VisionLanguageEncoder):
    """Text tokens and regions concatenated into one sequence through ``num_layers`` BERT layers.

    Text embeddings are BERT's; region embeddings follow ``config.region_embedding`` (UNITER's by default,
    LXMERT's or VisualBERT's). No position id is given to regions, so the encoder is equivariant to the
    order of regions. ``pooled`` is BERT's pooler on the [CLS] state (on the mean real-region state in a
    regions-only pass).

    Args:
        config: a :class:`SingleStreamConfig`.

    Inputs (a batch dict and/or keyword tensors; keywords win):
        input_ids ``(B, T)`` long, attention_mask ``(B, T)`` (1 = token), token_type_ids ``(B, T)``;
        region_feats ``(B, R, D)``, region_pos ``(B, R, P)``, region_mask ``(B, R)`` (1 = real region),
        region_masked ``(B, R)`` bool (regions whose features are replaced by the learned mask embedding,
        for masked region modelling). Either modality may be absent (unimodal pass); other keys such as
        objective labels are ignored.

    Example:
        >>> import torch
        >>> from vlptm.models import create_model
        >>> enc = create_model("single-tiny", region_feat_dim=64).eval()
        >>> batch = {"input_ids": torch.randint(0, 100, (2, 5)), "region_feats": torch.randn(2, 3, 64),
        ...          "region_pos": torch.rand(2, 3, 7)}
        >>> out = enc(batch)
        >>> tuple(out.text_hidden.shape), tuple(out.region_hidden.shape), tuple(out.pooled.shape)
        ((2, 5, 32), (2, 3, 32), (2, 32))
    """

    config_class = SingleStreamConfig
    model_type = "single_stream"

    def __init__(self, config: SingleStreamConfig) -> None:
        super().__init__(config)
        c = config
        self.layers = torch.nn.ModuleList(
            TransformerLayer(*self._layer_args()) for _ in range(c.num_layers)
        )
        self.pooler = Pooler(c.hidden_size)
        self._init_weights()

    def forward(self, batch: Optional[Mapping[str, Tensor]] = None, *, input_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, token_type_ids: Optional[Tensor] = None,
                region_feats: Optional[Tensor] = None, region_pos: Optional[Tensor] = None,
                region_mask: Optional[Tensor] = None, region_masked: Optional[Tensor] = None,
                output_attentions: bool = False) -> EncoderOutput:
        """Encode a batch (see the class docstring for the keys).

        Returns:
            :class:`EncoderOutput` with ``text_hidden (B, T, H)``, ``region_hidden (B, R, H)``,
            ``pooled (B, H)`` and, with ``output_attentions``, per-layer ``(B, N, T, R)`` word-to-region
            attention probabilities.
        """
        x = self._parse(batch, dict(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, region_feats=region_feats,
                                    region_pos=region_pos, region_mask=region_mask, region_masked=region_masked))
        parts, masks = [], []
        if x.has_text:
            parts.append(self.text_embeddings(x.input_ids, x.token_type_ids))  # (B, T, H)
            masks.append(x.attention_mask)
        if x.has_regions:
            parts.append(self.embed_regions(x.region_feats, x.region_pos, x.region_masked))  # (B, R, H)
            masks.append(x.region_mask)
        hidden = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, T+R, H)
        hidden = hidden.to(autocast_dtype(hidden))
        packing = Packing(torch.cat([m.to(torch.float32) for m in masks], dim=1))  # over (B, T+R)
        hidden = packing.pack(hidden)  # (n, H): real tokens and regions only
        want_probs = output_attentions and x.has_text and x.has_regions
        num_text = x.input_ids.shape[1] if x.has_text else 0
        cross = []
        for layer in self.layers:
            if want_probs:
                hidden, probs = layer(hidden, packing, True)
                cross.append(probs[:, :, :num_text, num_text:])  # (B, N, T, R)
            else:
                hidden, _ = self._layer(layer, hidden, packing)
        hidden = packing.unpack(hidden)  # (B, T+R, H), zeros at padding
        batch_size = hidden.shape[0]
        text_hidden = hidden[:, :num_text] if x.has_text else self._empty(batch_size, hidden)  # (B, T, H)
        region_hidden = hidden[:, num_text:] if x.has_regions else self._empty(batch_size, hidden)  # (B, R, H)
        summary = text_hidden[:, 0] if x.has_text else masked_mean(region_hidden, x.region_mask)  # (B, H)
        return EncoderOutput(text_hidden=text_hidden, region_hidden=region_hidden, pooled=self.pooler(summary),
                             cross_attentions=tuple(cross) if want_probs else None)
