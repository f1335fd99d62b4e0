"""Single- and dual-stream vision-language encoders, their named variants and checkpoint interop.

Example:
    >>> import torch
    >>> from vlptm.models import create_model, parse_overrides
    >>> enc = create_model("dual-tiny", **parse_overrides(["--region_feat_dim=320"]))
    >>> enc.config.region_feat_dim, enc.config.hidden_size
    (320, 32)
"""
from __future__ import annotations

from typing import Any, Union

from vlptm.models.base import EncoderOutput, VisionLanguageEncoder
from vlptm.models.config import (DualStreamConfig, EncoderConfig, SingleStreamConfig, get_model_config, list_models,
                                 parse_overrides, register_model)
from vlptm.models.dual_stream import DualStreamEncoder
from vlptm.models.hub import UnsafeCheckpointError, load_state_dict_file
from vlptm.models.interop import (LoadReport, infer_lxmert_config, infer_uniter_config, infer_visualbert_config,
                                  load_bert, load_lxmert, load_uniter, load_visualbert)

__all__ = [
    "EncoderConfig", "SingleStreamConfig", "DualStreamConfig", "EncoderOutput", "VisionLanguageEncoder",
    "SingleStreamEncoder", "DualStreamEncoder", "create_model", "from_pretrained", "list_models",
    "get_model_config", "parse_overrides", "register_model", "LoadReport", "load_bert", "load_lxmert",
    "load_visualbert", "load_uniter", "infer_lxmert_config", "infer_visualbert_config", "infer_uniter_config",
    "load_state_dict_file", "UnsafeCheckpointError",
]

from vlptm.models.single_stream import SingleStreamEncoder  # noqa: E402

_ENCODERS = {cls.model_type: cls for cls in (SingleStreamEncoder, DualStreamEncoder)}


def build_encoder(config: EncoderConfig) -> VisionLanguageEncoder:
    """The encoder class matching ``config``'s type, randomly initialised."""
    if isinstance(config, DualStreamConfig):
        return DualStreamEncoder(config)
    if isinstance(config, SingleStreamConfig):
        return SingleStreamEncoder(config)
    raise TypeError(f"no encoder for config type {type(config).__name__}")


def create_model(name: str, **overrides: Any) -> Union[SingleStreamEncoder, DualStreamEncoder]:
    """Build a named variant (see :func:`list_models`) with type-checked config overrides.

    When the resulting config has ``text_init`` (a BERT folder, hub name or ``"minilm-l6"``), the text
    weights are initialised from that BERT (see :func:`load_bert`).

    Args:
        name: e.g. ``"single-tiny"``, ``"dual-small"``, ``"dual-base"``, ``"visualbert-base"``.
        **overrides: config fields; strings are parsed against the field type (``hidden_size="256"``).

    Raises:
        KeyError: unknown model name or unknown override key.
        TypeError: an override value does not fit its field.

    Example:
        >>> create_model("single-tiny", num_layers="3").config.num_layers
        3
    """
    encoder = build_encoder(get_model_config(name, **overrides))
    if encoder.config.text_init:
        report = load_bert(encoder, encoder.config.text_init)
        report.raise_if_incomplete(allow_missing=True)
    return encoder


def from_pretrained(folder: str, **overrides: Any) -> Union[SingleStreamEncoder, DualStreamEncoder]:
    """Load an encoder of either stream type from a :meth:`~VisionLanguageEncoder.save_pretrained` folder."""
    from vlptm.models import hub

    config = hub.read_config(folder)
    model_type = config.get("model_type")
    if model_type not in _ENCODERS:
        raise ValueError(f"{folder}/config.json has model_type {model_type!r}; expected one of {sorted(_ENCODERS)}")
    return _ENCODERS[model_type].from_pretrained(folder, **overrides)
