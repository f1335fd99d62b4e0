"""Dual-stream encoder (LXMERT): language layers, object-relationship layers, cross-modality layers.

Shape legend: B batch, T text tokens, R regions, H hidden size, N heads, D region feature dim,
P region position dim.
"""
from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor, nn

from vlptm.models.base import EncoderOutput, VisionLanguageEncoder
from vlptm.models.config import DualStreamConfig
from vlptm.models.layers import (CrossModalLayer, Pooler, TransformerLayer,
                                 Packing, autocast_dtype, masked_mean)


class DualStreamEncoder(VisionLanguageEncoder):
    """LXMERT's encoder: text through ``num_text_layers`` BERT layers, regions through
    ``num_region_layers`` object-relationship layers, then ``num_cross_layers`` cross-modality layers
    (one cross-attention shared by both directions, then per-modality self-attention and FFN).

    Unimodal passes skip the cross-modality layers: a text-only pass returns the language layers'
    output and ``pooled = tanh(W h_[CLS])``; a regions-only pass returns the object-relationship layers'
    output and the pooler applied to the mean real-region state.

    Args:
        config: a :class:`DualStreamConfig`.

    Inputs: the same batch keys as :class:`SingleStreamEncoder` (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``region_feats``, ``region_pos``, ``region_mask``, ``region_masked``).

    Example:
        >>> import torch
        >>> from vlptm.models import create_model
        >>> enc = create_model("dual-tiny", region_feat_dim=64).eval()
        >>> out = enc(input_ids=torch.randint(0, 100, (2, 5)), region_feats=torch.randn(2, 3, 64),
        ...           region_pos=torch.rand(2, 3, 4))
        >>> tuple(out.text_hidden.shape), tuple(out.region_hidden.shape), tuple(out.pooled.shape)
        ((2, 5, 32), (2, 3, 32), (2, 32))
    """

    config_class = DualStreamConfig
    model_type = "dual_stream"

    def __init__(self, config: DualStreamConfig) -> None:
        super().__init__(config)
        c = config
        block = self._layer_args()
        self.text_layers = nn.ModuleList(TransformerLayer(*block) for _ in range(c.num_text_layers))
        self.region_layers = nn.ModuleList(TransformerLayer(*block) for _ in range(c.num_region_layers))
        self.cross_layers = nn.ModuleList(CrossModalLayer(*block) for _ in range(c.num_cross_layers))
        self.pooler = Pooler(c.hidden_size)
        self._init_weights()

    def forward(self, batch: Optional[Mapping[str, Tensor]] = None, *, input_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, token_type_ids: Optional[Tensor] = None,
                region_feats: Optional[Tensor] = None, region_pos: Optional[Tensor] = None,
                region_mask: Optional[Tensor] = None, region_masked: Optional[Tensor] = None,
                output_attentions: bool = False) -> EncoderOutput:
        """Encode a batch (see :class:`SingleStreamEncoder` for the keys).

        Returns:
            :class:`EncoderOutput`; with ``output_attentions`` and both modalities, one ``(B, N, T, R)``
            text-to-region cross-attention tensor per cross-modality layer.
        """
        x = self._parse(batch, dict(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, region_feats=region_feats,
                                    region_pos=region_pos, region_mask=region_mask, region_masked=region_masked))
        text = regions = None
        if x.has_text:
            text = self.text_embeddings(x.input_ids, x.token_type_ids)  # (B, T, H)
            text_packing = Packing(x.attention_mask)
            text = text_packing.pack(text.to(autocast_dtype(text)))  # (n_t, H)
            for layer in self.text_layers:
                text, _ = self._layer(layer, text, text_packing)
        if x.has_regions:
            regions = self.embed_regions(x.region_feats, x.region_pos, x.region_masked)  # (B, R, H)
            region_packing = Packing(x.region_mask)
            regions = region_packing.pack(regions.to(autocast_dtype(regions)))  # (n_r, H)
            for layer in self.region_layers:
                regions, _ = self._layer(layer, regions, region_packing)
        cross = []
        if x.has_text and x.has_regions:
            for layer in self.cross_layers:
                if output_attentions:
                    text, regions, probs = layer(text, text_packing, regions, region_packing, True)
                    cross.append(probs)  # (B, N, T, R)
                else:
                    text, regions, _ = self._layer(layer, text, text_packing, regions, region_packing)
        text = text_packing.unpack(text) if x.has_text else None  # (B, T, H), zeros at padding
        regions = region_packing.unpack(regions) if x.has_regions else None  # (B, R, H), zeros at padding
        like = text if text is not None else regions
        text_hidden = text if text is not None else self._empty(like.shape[0], like)  # (B, T, H)
        region_hidden = regions if regions is not None else self._empty(like.shape[0], like)  # (B, R, H)
        summary = text_hidden[:, 0] if x.has_text else masked_mean(region_hidden, x.region_mask)  # (B, H)
        return EncoderOutput(text_hidden=text_hidden, region_hidden=region_hidden, pooled=self.pooler(summary),
                             cross_attentions=tuple(cross) if cross else None)
