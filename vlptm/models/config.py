"""Encoder configurations, named variants and ``--key=value`` overrides.

One ``@dataclass`` per stream type (:class:`SingleStreamConfig`, :class:`DualStreamConfig`), both built on
the fields of :class:`EncoderConfig`. Named variants are small functions registered with
:func:`register_model`; :func:`create_model` builds one by name and applies type-checked overrides.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Type

from vlptm.coercion import coerce_fields

# Region-embedding styles (see ``vlptm.models.layers.RegionEmbeddings``).
REGION_EMBEDDING_STYLES = ("uniter", "lxmert", "visualbert")
HIDDEN_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
ATTENTION_BACKENDS = ("auto", "sdpa", "explicit")


@dataclass
class EncoderConfig:
    """Fields shared by both stream types (BERT names, so BERT/LXMERT/VisualBERT configs map one-to-one)."""

    vocab_size: int = 30522  # WordPiece vocabulary size (uncased BERT)
    hidden_size: int = 768  # width H of every token and region state
    num_attention_heads: int = 12  # heads per attention block; must divide hidden_size
    intermediate_size: int = 3072  # FFN inner width
    hidden_act: str = "gelu"  # FFN activation: "gelu" (erf, BERT's), "gelu_tanh" or "relu"
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and on each residual branch
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest text T
    type_vocab_size: int = 2  # token-type (segment) vocabulary
    layer_norm_eps: float = 1e-12  # epsilon of every LayerNorm
    initializer_range: float = 0.02  # std of the normal init of Linear/Embedding weights
    region_feat_dim: int = 2048  # D of region features (2048 bottom-up; the project's detector: smaller)
    region_pos_dim: int = 7  # P of region positions: 4 (LXMERT), 5 (ViLBERT), 7 (UNITER), 0 = none
    region_embedding: str = "uniter"  # region-embedding style: "uniter", "lxmert" or "visualbert"
    region_token_type: int = 1  # token-type row added to regions by the "uniter" style
    text_init: str = ""  # BERT folder / hub name / alias ("minilm-l6") to initialise text weights from
    gradient_checkpointing: bool = False  # recompute layer activations in backward to save memory
    attention_backend: str = "auto"  # "sdpa", "explicit", or "auto": SDPA except CPU autograd passes

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent fields."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.region_embedding not in REGION_EMBEDDING_STYLES:
            raise ValueError(
                f"region_embedding must be one of {REGION_EMBEDDING_STYLES}, got {self.region_embedding!r}")
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {HIDDEN_ACTIVATIONS}, got {self.hidden_act!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if self.region_embedding == "visualbert" and self.region_pos_dim != 0:
            raise ValueError("region_embedding='visualbert' has no box positions: set region_pos_dim=0")
        if self.region_embedding != "visualbert" and self.region_pos_dim <= 0:
            raise ValueError(f"region_embedding={self.region_embedding!r} needs region_pos_dim > 0 (4, 5 or 7)")
        if not 0 <= self.region_token_type < self.type_vocab_size:
            raise ValueError(
                f"region_token_type {self.region_token_type} outside type_vocab_size {self.type_vocab_size}")
        for name in ("vocab_size", "intermediate_size", "max_position_embeddings", "region_feat_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)


@dataclass
class SingleStreamConfig(EncoderConfig):
    """UNITER / Unicoder-VL / VisualBERT: text and regions concatenated into one Transformer."""

    num_layers: int = 12  # Transformer layers over the joint sequence

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")


@dataclass
class DualStreamConfig(EncoderConfig):
    """LXMERT: language layers, object-relationship layers, then cross-modality layers."""

    region_pos_dim: int = 4  # LXMERT's normalised [x1, y1, x2, y2]
    region_embedding: str = "lxmert"  # (LN(W_f f) + LN(W_p p)) / 2
    num_text_layers: int = 9  # language (BERT) layers
    num_region_layers: int = 5  # object-relationship layers
    num_cross_layers: int = 5  # cross-modality layers

    def validate(self) -> None:
        super().validate()
        for name in ("num_text_layers", "num_region_layers", "num_cross_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_cross_layers < 1:
            raise ValueError("a dual-stream encoder needs at least one cross-modality layer")


# ----------------------------------------------------------------------------------------------------------
# Overrides: "--key=value" strings and keyword values, type-checked against the dataclass fields.
# ----------------------------------------------------------------------------------------------------------
def apply_overrides(config: EncoderConfig, overrides: Mapping[str, Any]) -> EncoderConfig:
    """Return a copy of ``config`` with ``overrides`` applied, type-checked and validated.

    Args:
        config: a config dataclass instance.
        overrides: field name -> value; string values are parsed (``"256"`` -> 256 for an int field).

    Raises:
        KeyError: a key is not a field of the config.
        TypeError: a value does not fit the field's type.
        ValueError: the resulting config is inconsistent.
    """
    new = dataclasses.replace(config, **coerce_fields(type(config), overrides, noun="override"))
    new.validate()
    return new


def parse_overrides(args: Iterable[str], config_cls: Optional[Type[EncoderConfig]] = None) -> Dict[str, Any]:
    """Parse ``--key=value`` strings into a dict, typed against ``config_cls`` when given.

    Without ``config_cls`` the values stay strings; :func:`create_model` types them against the variant's
    config, so ``create_model(name, **parse_overrides(argv))`` is type-checked either way.

    Args:
        args: strings of the form ``--key=value`` (the leading dashes are optional).
        config_cls: a config dataclass to check keys and convert values against.

    Returns:
        ``{key: value}``.

    Raises:
        ValueError: an argument is not of the form ``--key=value`` or a key repeats.
        KeyError: a key is not a field of ``config_cls``.
        TypeError: a value does not fit the field's type.

    Example:
        >>> parse_overrides(["--hidden_size=256", "--gradient_checkpointing=true"], SingleStreamConfig)
        {'hidden_size': 256, 'gradient_checkpointing': True}
    """
    parsed: Dict[str, Any] = {}
    for arg in args:
        body = arg[2:] if arg.startswith("--") else arg
        key, sep, value = body.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"override {arg!r} is not of the form --key=value")
        if key in parsed:
            raise ValueError(f"override {key!r} given twice")
        parsed[key] = value
    if config_cls is not None:
        parsed = coerce_fields(config_cls, parsed, noun="override")
    return parsed


# ----------------------------------------------------------------------------------------------------------
# Named variants
# ----------------------------------------------------------------------------------------------------------
_MODEL_CONFIGS: Dict[str, Callable[[], EncoderConfig]] = {}


def register_model(fn: Callable[[], EncoderConfig]) -> Callable[[], EncoderConfig]:
    """Register a variant: a function named like the variant (``_`` for ``-``) returning its config."""
    _MODEL_CONFIGS[fn.__name__.replace("_", "-")] = fn
    return fn


def list_models() -> List[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(name: str, **overrides: Any) -> EncoderConfig:
    """The config of variant ``name`` with ``overrides`` applied (see :func:`create_model`)."""
    if name not in _MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {list_models()}")
    config = _MODEL_CONFIGS[name]()
    return apply_overrides(config, overrides)


_TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
_SMALL = dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536)  # all-MiniLM-L6-v2


@register_model
def single_tiny() -> SingleStreamConfig:
    """For tests: 2 layers of width 32."""
    return SingleStreamConfig(num_layers=2, **_TINY)


@register_model
def single_small() -> SingleStreamConfig:
    """MiniLM-sized (6 x 384, 12 heads): ``text_init="minilm-l6"`` starts it from the offline MiniLM."""
    return SingleStreamConfig(num_layers=6, **_SMALL)


@register_model
def single_base() -> SingleStreamConfig:
    """BERT-base / UNITER-base sized: 12 x 768 (``text_init="bert-base-uncased"`` with a hub)."""
    return SingleStreamConfig(num_layers=12)


@register_model
def dual_tiny() -> DualStreamConfig:
    """For tests: 2 language, 1 object-relationship, 2 cross-modality layers of width 32."""
    return DualStreamConfig(num_text_layers=2, num_region_layers=1, num_cross_layers=2, **_TINY)


@register_model
def dual_small() -> DualStreamConfig:
    """MiniLM-sized 6/3/3 layers (all six MiniLM layers become the language layers)."""
    return DualStreamConfig(num_text_layers=6, num_region_layers=3, num_cross_layers=3, **_SMALL)


@register_model
def dual_base() -> DualStreamConfig:
    """LXMERT's layout: 9 language, 5 object-relationship, 5 cross-modality layers of width 768."""
    return DualStreamConfig(num_text_layers=9, num_region_layers=5, num_cross_layers=5)


@register_model
def lxmert_base() -> DualStreamConfig:
    """Exactly ``unc-nlp/lxmert-base-uncased``: load its weights with ``vlptm.models.load_lxmert``."""
    return DualStreamConfig(num_text_layers=9, num_region_layers=5, num_cross_layers=5, region_pos_dim=4)


@register_model
def uniter_base() -> SingleStreamConfig:
    """UNITER-base: 12 x 768, 7-d positions; load its weights with ``vlptm.models.load_uniter``."""
    return SingleStreamConfig(num_layers=12, region_embedding="uniter", region_pos_dim=7)


@register_model
def visualbert_base() -> SingleStreamConfig:
    """VisualBERT (``uclanlp/visualbert-vqa-coco-pre``): no box positions, 2048-d features."""
    return SingleStreamConfig(num_layers=12, region_embedding="visualbert", region_pos_dim=0)
