"""What both encoders share: the output dataclass, batch parsing, initialisation and checkpoint I/O."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlptm.models import hub
from vlptm.models.config import EncoderConfig
from vlptm.models.layers import RegionEmbeddings, TextEmbeddings, masked_mean

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
REGION_KEYS = ("region_feats", "region_pos", "region_mask", "region_masked")

SUMMARY_POOLINGS = ("cls", "mean")  # what EncoderOutput.summary can give a head

_E = TypeVar("_E", bound="VisionLanguageEncoder")


@dataclass
class EncoderOutput:
    """What every encoder returns, in train and eval alike.

    Padded positions (``attention_mask`` / ``region_mask`` 0) are never computed: their rows of
    ``text_hidden`` / ``region_hidden`` are zeros.

    Attributes:
        text_hidden: ``(B, T, H)`` final text states; ``(B, 0, H)`` for a regions-only pass.
        region_hidden: ``(B, R, H)`` final region states; ``(B, 0, H)`` for a text-only pass.
        pooled: ``(B, H)``. Joint and text-only passes: ``tanh(W h_[CLS])`` (BERT's pooler on the first
            text state). Regions-only pass: the same pooler on the mean of the real regions' states.
        cross_attentions: only with ``output_attentions=True`` and both modalities: one ``(B, N, T, R)``
            tensor per cross-modal layer, the attention probabilities of each word on each region
            (dual stream: the text-to-region cross-attention; single stream: the text-rows / region-columns
            block of the joint self-attention, so a row sums to the share of attention spent on regions).
    """

    text_hidden: Tensor
    region_hidden: Tensor
    pooled: Tensor
    cross_attentions: Optional[Tuple[Tensor, ...]] = None

    def summary(self, pooling: str, attention_mask: Optional[Tensor] = None,
                region_mask: Optional[Tensor] = None) -> Tensor:
        """``(B, H)`` summary of a joint pass for a head (ITM, VQA).

        Args:
            pooling: ``"cls"``: :attr:`pooled` (BERT's pooler on [CLS], what BERT, UNITER and LXMERT heads
                read); ``"mean"``: the mean of every real text and region state.
            attention_mask, region_mask: ``(B, T)`` / ``(B, R)`` 1 for real positions (default: all real).
        """
        if pooling not in SUMMARY_POOLINGS:
            raise ValueError(f"pooling must be one of {SUMMARY_POOLINGS}, got {pooling!r}")
        if pooling == "cls":
            return self.pooled
        masks = [m if m is not None else torch.ones(h.shape[:2], device=h.device)
                 for h, m in ((self.text_hidden, attention_mask), (self.region_hidden, region_mask))]
        states = torch.cat([self.text_hidden, self.region_hidden], dim=1).float()  # (B, T+R, H)
        return masked_mean(states, torch.cat(masks, dim=1)).to(self.pooled.dtype)  # (B, H)


@dataclass
class _Inputs:
    input_ids: Optional[Tensor]
    attention_mask: Optional[Tensor]
    token_type_ids: Optional[Tensor]
    region_feats: Optional[Tensor]
    region_pos: Optional[Tensor]
    region_mask: Optional[Tensor]
    region_masked: Optional[Tensor]

    @property
    def has_text(self) -> bool:
        return self.input_ids is not None

    @property
    def has_regions(self) -> bool:
        return self.region_feats is not None


class VisionLanguageEncoder(nn.Module):
    """Base of :class:`SingleStreamEncoder` and :class:`DualStreamEncoder` (not used directly)."""

    config_class: Type[EncoderConfig] = EncoderConfig
    model_type: str = ""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        c = config
        self.text_embeddings = TextEmbeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings,
                                              c.type_vocab_size, c.layer_norm_eps, c.hidden_dropout_prob)
        self.region_embeddings = RegionEmbeddings(c.region_feat_dim, c.region_pos_dim, c.hidden_size,
                                                  c.region_embedding, c.layer_norm_eps, c.hidden_dropout_prob)

    def _layer_args(self) -> tuple:
        """Positional arguments of every Transformer block (self- or cross-attention) of this config."""
        c = self.config
        return (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                c.attention_probs_dropout_prob, c.hidden_dropout_prob, c.layer_norm_eps, c.attention_backend)

    # -- properties heads rely on ----------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def get_input_embeddings(self) -> nn.Embedding:
        """The ``(vocab_size, H)`` word embedding, for tying an MLM decoder to it."""
        return self.text_embeddings.word_embeddings

    def embed_regions(self, feats: Tensor, pos: Optional[Tensor], masked: Optional[Tensor] = None) -> Tensor:
        """``(B, R, D)`` features and ``(B, R, P)`` positions -> ``(B, R, H)`` region embeddings."""
        type_table = self.text_embeddings.token_type_embeddings.weight
        return self.region_embeddings(feats, pos, masked, type_embedding=type_table[self.config.region_token_type],
                                      shared_norm=self.text_embeddings.norm)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in backward (training only) to save memory."""
        self.gradient_checkpointing = enabled
        self.config.gradient_checkpointing = enabled

    # -- helpers for subclasses -------------------------------------------------------------------------
    def _init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        region = self.region_embeddings
        nn.init.normal_(region.mask_embedding, std=std)
        if hasattr(region, "modality_embedding"):
            nn.init.normal_(region.modality_embedding, std=std)

    def _layer(self, layer: nn.Module, *args: Any) -> Any:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _parse(self, batch: Optional[Mapping[str, Tensor]], overrides: Dict[str, Optional[Tensor]]) -> _Inputs:
        values: Dict[str, Optional[Tensor]] = {key: None for key in TEXT_KEYS + REGION_KEYS}
        if batch is not None:
            if not isinstance(batch, Mapping):
                raise TypeError(f"batch must be a mapping of tensors, got {type(batch).__name__}")
            values.update({key: batch.get(key) for key in values})
        values.update({key: value for key, value in overrides.items() if value is not None})
        inputs = _Inputs(**values)
        if not inputs.has_text and not inputs.has_regions:
            raise ValueError("the batch has neither input_ids nor region_feats")
        if inputs.has_text:
            ids = inputs.input_ids
            if ids.dim() != 2:
                raise ValueError(f"input_ids must be (B, T), got shape {tuple(ids.shape)}")
            if inputs.attention_mask is None:
                inputs.attention_mask = torch.ones_like(ids)
            if inputs.token_type_ids is None:
                inputs.token_type_ids = torch.zeros_like(ids)
            for key in ("attention_mask", "token_type_ids"):
                if getattr(inputs, key).shape != ids.shape:
                    raise ValueError(f"{key} shape {tuple(getattr(inputs, key).shape)} != input_ids shape "
                                     f"{tuple(ids.shape)}")
        if inputs.has_regions:
            feats = inputs.region_feats
            if feats.dim() != 3:
                raise ValueError(f"region_feats must be (B, R, D), got shape {tuple(feats.shape)}")
            if inputs.region_mask is None:
                inputs.region_mask = torch.ones(feats.shape[:2], dtype=torch.long, device=feats.device)
            for key in ("region_mask", "region_masked"):
                value = getattr(inputs, key)
                if value is not None and value.shape != feats.shape[:2]:
                    raise ValueError(f"{key} shape {tuple(value.shape)} != (B, R) {tuple(feats.shape[:2])}")
            if inputs.region_pos is not None and inputs.region_pos.shape[:2] != feats.shape[:2]:
                raise ValueError(f"region_pos shape {tuple(inputs.region_pos.shape)} does not match region_feats "
                                 f"{tuple(feats.shape)}")
        if inputs.has_text and inputs.has_regions and inputs.input_ids.shape[0] != inputs.region_feats.shape[0]:
            raise ValueError(f"text batch {inputs.input_ids.shape[0]} != region batch {inputs.region_feats.shape[0]}")
        return inputs

    def _empty(self, batch_size: int, like: Tensor) -> Tensor:
        return like.new_zeros(batch_size, 0, self.config.hidden_size)  # (B, 0, H)

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_pretrained(self, folder: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``folder``.

        Example:
            >>> from vlptm.models import create_model, from_pretrained
            >>> import tempfile
            >>> enc = create_model("single-tiny")
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = enc.save_pretrained(d)
            ...     type(from_pretrained(d)).__name__
            'SingleStreamEncoder'
        """
        config = {"model_type": self.model_type, **self.config.to_dict()}
        return hub.save_folder(folder, config, self.state_dict())

    @classmethod
    def from_pretrained(cls: Type[_E], folder: Union[str, os.PathLike], **overrides: Any) -> _E:
        """Build the encoder saved in ``folder`` by :meth:`save_pretrained` (strict weight loading).

        Args:
            folder: a ``save_pretrained`` folder.
            **overrides: config fields to change that do not alter weight shapes (e.g. dropout,
                ``gradient_checkpointing``).
        """
        from vlptm.models.config import apply_overrides

        config_dict, state = hub.read_folder(folder)
        model_type = config_dict.pop("model_type", cls.model_type)
        if cls.model_type and model_type != cls.model_type:
            raise ValueError(f"{folder} holds a {model_type!r} encoder, not {cls.model_type!r}")
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config_dict) - names)
        if unknown:
            raise KeyError(f"{folder}/config.json has unknown keys {unknown} for {cls.config_class.__name__}")
        config = apply_overrides(cls.config_class(**config_dict), overrides)
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model
