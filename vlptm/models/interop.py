"""Load the peers' checkpoints into vlptm's encoders: BERT, LXMERT, VisualBERT and UNITER key names.

Each loader turns a checkpoint's keys into rules ``target <- combine(source tensors)`` (separate
``query``/``key``/``value`` matrices are concatenated into the fused ``qkv``; VisualBERT's visual position
row 0 and visual token-type row 1 are summed into one modality vector; UNITER's two-row mask embedding
gives its row 1), checks every shape, and returns a :class:`LoadReport` naming what was loaded, what the
checkpoint lacked (missing), what it had that was not used (unexpected), which keys belong to heads
outside the encoder (ignored) and which encoder weights were set to a documented default.

Accepted layouts:
- LXMERT: Hugging Face ``LxmertModel`` (no prefix) and ``LxmertForPreTraining`` (``lxmert.``), the
  original release's ``module.bert.`` / ``bert.`` keys; -> :class:`DualStreamEncoder` with
  ``region_embedding="lxmert"``.
- VisualBERT: ``VisualBertModel`` (no prefix) or ``visual_bert.`` heads models; -> single stream with
  ``region_embedding="visualbert"``, ``region_pos_dim=0``.
- UNITER: the released ``uniter.`` keys (``uniter.embeddings.*``, ``uniter.img_embeddings.*``,
  ``uniter.encoder.layer.N.*``, ``uniter.pooler.*``); -> single stream with ``region_embedding="uniter"``.
- BERT (text initialisation): ``BertModel`` keys, with or without ``bert.``.

``module.`` prefixes (DataParallel), any other wrapper prefix in front of the encoder (found from where
``embeddings.word_embeddings.weight`` sits) and TF-style LayerNorm ``gamma``/``beta`` names are accepted.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from vlptm.models.base import VisionLanguageEncoder
from vlptm.models.config import DualStreamConfig, SingleStreamConfig, apply_overrides
from vlptm.models.hub import load_state_dict_file

logger = logging.getLogger(__name__)

StateSource = Union[Mapping[str, Tensor], str, os.PathLike]
_Rule = Tuple[str, Tuple[str, ...], Optional[Callable[..., Tensor]]]


@dataclass
class LoadReport:
    """The outcome of loading a peer checkpoint into an encoder.

    Attributes:
        source: which layout was read ("lxmert", "visualbert", "uniter", "bert").
        loaded: encoder weights filled from the checkpoint.
        missing: encoder weights the checkpoint did not provide (left at their initial values).
        unexpected: checkpoint keys inside the encoder's namespace that no rule used.
        ignored: checkpoint keys outside the encoder (pretraining/task heads, buffers such as position_ids).
        defaulted: encoder weights set to a documented default, with the reason.
    """

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    defaulted: Dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when nothing is missing or unexpected."""
        return not self.missing and not self.unexpected

    def raise_if_incomplete(self, allow_missing: bool = False) -> None:
        """Raise ``KeyError`` listing missing (unless allowed) or unexpected keys."""
        if self.unexpected or (self.missing and not allow_missing):
            raise KeyError(str(self))

    def __str__(self) -> str:
        lines = [f"{self.source} checkpoint: {len(self.loaded)} encoder tensors loaded"]
        for title, keys in (("missing (left at init)", self.missing), ("unexpected (unused)", self.unexpected)):
            if keys:
                lines.append(f"  {title}: {len(keys)}: " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        if self.ignored:
            lines.append(f"  ignored (outside the encoder): {len(self.ignored)}: " + ", ".join(self.ignored[:8])
                         + (" ..." if len(self.ignored) > 8 else ""))
        for key, reason in self.defaulted.items():
            lines.append(f"  defaulted: {key}: {reason}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Key plumbing
# ----------------------------------------------------------------------------------------------------------
def _as_state_dict(source: StateSource) -> Dict[str, Tensor]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
                if (path / name).is_file():
                    return load_state_dict_file(path / name)
            raise FileNotFoundError(f"{path} has no model.safetensors / pytorch_model.bin")
        return load_state_dict_file(path)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a state dict or a checkpoint path, got {type(source).__name__}")
    return dict(source)


def _normalise(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))


_ANCHOR = "embeddings.word_embeddings.weight"


def _split(state: Mapping[str, Tensor], prefixes: Sequence[str], roots: Sequence[str]
           ) -> Tuple[Dict[str, Tensor], List[str]]:
    """Split into (encoder keys without prefix, ignored keys).

    The encoder's prefix is the one in front of ``embeddings.word_embeddings.weight`` (so wrappers such as
    LXMERT's fine-tuned ``lxrt_encoder.model.bert.`` work too); without that key, the known ``prefixes``.
    """
    state = {_normalise(k): v for k, v in state.items()}
    anchors = [k[: -len(_ANCHOR)] for k in state if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    if len(anchors) == 1 and anchors[0]:
        prefixes = (anchors[0],)
    prefixed = any(k.startswith(p) for k in state for p in prefixes)
    encoder, ignored = {}, []
    for key, value in state.items():
        inner = next((key[len(p):] for p in prefixes if key.startswith(p)), None)
        if inner is None and not prefixed and key.startswith(tuple(roots)):
            inner = key
        if inner is None or inner.endswith("position_ids"):
            ignored.append(key)
        else:
            encoder[inner] = value
    return encoder, sorted(ignored)


def _linear(src: str, dst: str) -> List[_Rule]:
    return [(f"{dst}.weight", (f"{src}.weight",), None), (f"{dst}.bias", (f"{src}.bias",), None)]


def _qkv(src: str, dst: str, names: Tuple[str, str, str] = ("query", "key", "value")) -> List[_Rule]:
    cat = lambda *parts: torch.cat(parts, dim=0)  # noqa: E731
    return [(f"{dst}.qkv.{p}", tuple(f"{src}.{n}.{p}" for n in names), cat) for p in ("weight", "bias")]


def _attention(src_qkv: str, src_out: str, dst: str) -> List[_Rule]:
    """A BERT attention (``{src_qkv}.query`` ..., ``{src_out}.dense``/``.LayerNorm``) -> :class:`Attention`."""
    return _qkv(src_qkv, dst) + _linear(f"{src_out}.dense", f"{dst}.dense") + _linear(f"{src_out}.LayerNorm",
                                                                                         f"{dst}.norm")


def _ffn(src_inter: str, src_out: str, dst: str) -> List[_Rule]:
    return (_linear(f"{src_inter}.dense", f"{dst}.fc1") + _linear(f"{src_out}.dense", f"{dst}.fc2")
            + _linear(f"{src_out}.LayerNorm", f"{dst}.norm"))


def _bert_layer(src: str, dst: str) -> List[_Rule]:
    return (_attention(f"{src}.attention.self", f"{src}.attention.output", f"{dst}.attention")
            + _ffn(f"{src}.intermediate", f"{src}.output", f"{dst}.ffn"))


def _text_embeddings(src: str = "embeddings") -> List[_Rule]:
    rules = [(f"text_embeddings.{n}.weight", (f"{src}.{n}.weight",), None)
             for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    return rules + _linear(f"{src}.LayerNorm", "text_embeddings.norm")


def _apply(encoder: VisionLanguageEncoder, report: LoadReport, state: Dict[str, Tensor], rules: List[_Rule],
           defaults: Optional[Mapping[str, Tuple[Callable[[Tensor], Tensor], str]]] = None) -> LoadReport:
    """Fill ``encoder`` from ``state`` by ``rules``; everything not covered is reported."""
    target = encoder.state_dict()
    new: Dict[str, Tensor] = {}
    used = set()
    for dst, sources, combine in rules:
        if dst not in target:
            raise KeyError(f"internal: rule targets unknown encoder key {dst}")
        if not all(s in state for s in sources):
            continue
        value = combine(*(state[s] for s in sources)) if combine else state[sources[0]]
        if tuple(value.shape) != tuple(target[dst].shape):
            raise ValueError(f"{report.source} key(s) {list(sources)} give shape {tuple(value.shape)} but encoder "
                             f"weight {dst} is {tuple(target[dst].shape)}: the encoder config does not match the "
                             f"checkpoint (see infer_{report.source}_config)")
        new[dst] = value.to(target[dst].dtype)
        used.update(sources)
    for dst, (make, reason) in (defaults or {}).items():
        if dst in target and dst not in new:
            new[dst] = make(target[dst])
            report.defaulted[dst] = reason
    report.loaded = sorted(k for k in new if k not in report.defaulted)
    report.missing = sorted(k for k in target if k not in new)
    report.unexpected = sorted(k for k in state if k not in used)
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value)
    if report.complete:
        logger.info("%s", report)
    else:
        logger.warning("%s", report)
    return report


def _require(encoder: VisionLanguageEncoder, config_cls: type, style: str, source: str) -> None:
    if not isinstance(encoder.config, config_cls):
        raise TypeError(f"{source} weights load into a {config_cls.__name__} encoder, got {type(encoder).__name__}")
    if encoder.config.region_embedding != style:
        raise ValueError(f"{source} weights need region_embedding={style!r} (the encoder has "
                         f"{encoder.config.region_embedding!r}); build it with infer_{source}_config(...)")


def _layer_count(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
    return max(indices) + 1 if indices else 0


_ZERO_MASK = (torch.zeros_like, "the checkpoint has no mask embedding; zeros reproduce its zero-feature masking")


# ----------------------------------------------------------------------------------------------------------
# LXMERT
# ----------------------------------------------------------------------------------------------------------
_LXMERT_PREFIXES = ("lxmert.", "bert.")
_BERT_ROOTS = ("embeddings.", "encoder.", "pooler.")


def load_lxmert(encoder: VisionLanguageEncoder, source: StateSource, strict: bool = False) -> LoadReport:
    """Load LXMERT weights into a :class:`DualStreamEncoder` (``region_embedding="lxmert"``).

    Args:
        encoder: a dual-stream encoder whose config matches the checkpoint (:func:`infer_lxmert_config`).
        source: a state dict, a checkpoint file (``.safetensors``; ``.bin``/``.pth`` weights-only) or a folder.
            Hugging Face ``LxmertModel`` / ``LxmertForPreTraining`` keys and the original release's
            ``module.bert.`` keys are accepted; pretraining heads (``cls.``, ``obj_predict_head.``,
            ``answer_head.``) are reported as ignored.
        strict: raise ``KeyError`` if anything is missing or unexpected.

    Returns:
        A :class:`LoadReport`. The encoder's region mask embedding, which LXMERT lacks, is set to zeros.

    Example:
        >>> from transformers import LxmertConfig, LxmertModel
        >>> from vlptm.models import DualStreamEncoder, infer_lxmert_config, load_lxmert
        >>> hf = LxmertModel(LxmertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
        ...                  l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16))
        >>> state = hf.state_dict()
        >>> enc = DualStreamEncoder(infer_lxmert_config(state, num_attention_heads=4))
        >>> load_lxmert(enc, state).complete
        True
    """
    _require(encoder, DualStreamConfig, "lxmert", "lxmert")
    state, ignored = _split(_as_state_dict(source), _LXMERT_PREFIXES, _BERT_ROOTS)
    c = encoder.config
    rules = _text_embeddings() + _linear("pooler.dense", "pooler.dense")
    vis = "encoder.visn_fc"
    rules += (_linear(f"{vis}.visn_fc", "region_embeddings.feat_proj")
              + _linear(f"{vis}.visn_layer_norm", "region_embeddings.feat_norm")
              + _linear(f"{vis}.box_fc", "region_embeddings.pos_proj")
              + _linear(f"{vis}.box_layer_norm", "region_embeddings.pos_norm"))
    for i in range(c.num_text_layers):
        rules += _bert_layer(f"encoder.layer.{i}", f"text_layers.{i}")
    for i in range(c.num_region_layers):
        rules += _bert_layer(f"encoder.r_layers.{i}", f"region_layers.{i}")
    for i in range(c.num_cross_layers):
        src, dst = f"encoder.x_layers.{i}", f"cross_layers.{i}"
        rules += (_attention(f"{src}.visual_attention.att", f"{src}.visual_attention.output", f"{dst}.cross_attention")
                  + _attention(f"{src}.lang_self_att.self", f"{src}.lang_self_att.output", f"{dst}.text_attention")
                  + _attention(f"{src}.visn_self_att.self", f"{src}.visn_self_att.output", f"{dst}.region_attention")
                  + _ffn(f"{src}.lang_inter", f"{src}.lang_output", f"{dst}.text_ffn")
                  + _ffn(f"{src}.visn_inter", f"{src}.visn_output", f"{dst}.region_ffn"))
    report = _apply(encoder, LoadReport("lxmert", ignored=ignored), state, rules,
                    {"region_embeddings.mask_embedding": _ZERO_MASK})
    if strict:
        report.raise_if_incomplete()
    return report


def infer_lxmert_config(source: StateSource, num_attention_heads: int = 12, **overrides) -> DualStreamConfig:
    """The :class:`DualStreamConfig` of an LXMERT checkpoint, read from its tensor shapes.

    Args:
        source: state dict, file or folder (as :func:`load_lxmert`).
        num_attention_heads: not recoverable from shapes (12 for LXMERT base).
        **overrides: any other config field (e.g. dropout).
    """
    state, _ = _split(_as_state_dict(source), _LXMERT_PREFIXES, _BERT_ROOTS)
    hidden, feat_dim = state["encoder.visn_fc.visn_fc.weight"].shape
    inter = _first_intermediate(state, ("encoder.layer.0", "encoder.x_layers.0.lang_inter", "encoder.r_layers.0"))
    config = DualStreamConfig(
        num_text_layers=_layer_count(state, "encoder.layer"), num_region_layers=_layer_count(state, "encoder.r_layers"),
        num_cross_layers=_layer_count(state, "encoder.x_layers"), region_pos_dim=state["encoder.visn_fc.box_fc.weight"]
        .shape[1], region_feat_dim=feat_dim, region_embedding="lxmert", **_text_shape(state, hidden, inter,
                                                                                       num_attention_heads))
    return apply_overrides(config, overrides)


def _first_intermediate(state: Mapping[str, Tensor], prefixes: Sequence[str]) -> int:
    for prefix in prefixes:
        for key in (f"{prefix}.intermediate.dense.weight", f"{prefix}.dense.weight"):
            if key in state:
                return state[key].shape[0]
    raise KeyError(f"no FFN weight found under {list(prefixes)}")


def _text_shape(state: Mapping[str, Tensor], hidden: int, inter: int, heads: int) -> dict:
    vocab, width = state["embeddings.word_embeddings.weight"].shape
    if width != hidden:
        raise ValueError(f"word embedding width {width} != hidden size {hidden}")
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
                type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0])


# ----------------------------------------------------------------------------------------------------------
# VisualBERT
# ----------------------------------------------------------------------------------------------------------
def load_visualbert(encoder: VisionLanguageEncoder, source: StateSource, strict: bool = False) -> LoadReport:
    """Load ``VisualBertModel`` weights into a :class:`SingleStreamEncoder` (``region_embedding="visualbert"``).

    VisualBERT's visual embedding is ``W f + visual_position[0] + visual_token_type[1]`` (Hugging Face's
    defaults: all-zero visual position ids, all-one visual token types) followed by the LayerNorm it shares
    with the text; the two rows are summed into the encoder's ``modality_embedding``. Checkpoints of the
    ``bypass_transformer`` variant are not supported (reported as unexpected).

    Args: as :func:`load_lxmert` (heads under ``cls.`` etc. of ``visual_bert.``-prefixed models are ignored).

    Returns:
        A :class:`LoadReport`; the region mask embedding (VisualBERT has none) is set to zeros.
    """
    _require(encoder, SingleStreamConfig, "visualbert", "visualbert")
    state, ignored = _split(_as_state_dict(source), ("visual_bert.",), _BERT_ROOTS)
    c = encoder.config
    row = c.region_token_type
    rules = _text_embeddings() + _linear("pooler.dense", "pooler.dense")
    rules += _linear("embeddings.visual_projection", "region_embeddings.feat_proj")
    rules.append(("region_embeddings.modality_embedding",
                  ("embeddings.visual_token_type_embeddings.weight", "embeddings.visual_position_embeddings.weight"),
                  lambda types, positions: types[row] + positions[0]))
    for i in range(c.num_layers):
        rules += _bert_layer(f"encoder.layer.{i}", f"layers.{i}")
    report = _apply(encoder, LoadReport("visualbert", ignored=ignored), state, rules,
                    {"region_embeddings.mask_embedding": _ZERO_MASK})
    if strict:
        report.raise_if_incomplete()
    return report


def infer_visualbert_config(source: StateSource, num_attention_heads: int = 12, **overrides) -> SingleStreamConfig:
    """The :class:`SingleStreamConfig` of a VisualBERT checkpoint, read from its tensor shapes."""
    state, _ = _split(_as_state_dict(source), ("visual_bert.",), _BERT_ROOTS)
    hidden, feat_dim = state["embeddings.visual_projection.weight"].shape
    config = SingleStreamConfig(
        num_layers=_layer_count(state, "encoder.layer"), region_feat_dim=feat_dim, region_pos_dim=0,
        region_embedding="visualbert",
        **_text_shape(state, hidden, _first_intermediate(state, ("encoder.layer.0",)), num_attention_heads))
    return apply_overrides(config, overrides)


# ----------------------------------------------------------------------------------------------------------
# UNITER
# ----------------------------------------------------------------------------------------------------------
_UNITER_ROOTS = ("embeddings.", "img_embeddings.", "encoder.", "pooler.")


def load_uniter(encoder: VisionLanguageEncoder, source: StateSource, strict: bool = False) -> LoadReport:
    """Load UNITER's released weights into a :class:`SingleStreamEncoder` (``region_embedding="uniter"``).

    UNITER's region embedding is ``LN(LN(W_f f) + LN(W_p p) + token_type[1])`` with its own output
    LayerNorm, and its ``mask_embedding`` is a 2-row table whose row 1 is added to masked features.

    Args: as :func:`load_lxmert`; task heads (``cls.``, ``itm_output.``, ``feat_regress.``,
        ``region_classifier.``, ``vqa_output.`` ...) are reported as ignored.
    """
    _require(encoder, SingleStreamConfig, "uniter", "uniter")
    if encoder.config.region_token_type != 1:
        raise ValueError("UNITER adds token-type row 1 to regions: set region_token_type=1")
    state, ignored = _split(_as_state_dict(source), ("uniter.",), _UNITER_ROOTS)
    img = "img_embeddings"
    rules = _text_embeddings() + _linear("pooler.dense", "pooler.dense")
    rules += (_linear(f"{img}.img_linear", "region_embeddings.feat_proj")
              + _linear(f"{img}.img_layer_norm", "region_embeddings.feat_norm")
              + _linear(f"{img}.pos_linear", "region_embeddings.pos_proj")
              + _linear(f"{img}.pos_layer_norm", "region_embeddings.pos_norm")
              + _linear(f"{img}.LayerNorm", "region_embeddings.norm"))
    rules.append(("region_embeddings.mask_embedding", (f"{img}.mask_embedding.weight",), lambda table: table[1]))
    for i in range(encoder.config.num_layers):
        rules += _bert_layer(f"encoder.layer.{i}", f"layers.{i}")
    report = _apply(encoder, LoadReport("uniter", ignored=ignored), state, rules)
    if strict:
        report.raise_if_incomplete()
    return report


def infer_uniter_config(source: StateSource, num_attention_heads: int = 12, **overrides) -> SingleStreamConfig:
    """The :class:`SingleStreamConfig` of a UNITER checkpoint, read from its tensor shapes."""
    state, _ = _split(_as_state_dict(source), ("uniter.",), _UNITER_ROOTS)
    hidden, feat_dim = state["img_embeddings.img_linear.weight"].shape
    config = SingleStreamConfig(
        num_layers=_layer_count(state, "encoder.layer"), region_feat_dim=feat_dim,
        region_pos_dim=state["img_embeddings.pos_linear.weight"].shape[1], region_embedding="uniter",
        **_text_shape(state, hidden, _first_intermediate(state, ("encoder.layer.0",)), num_attention_heads))
    return apply_overrides(config, overrides)


# ----------------------------------------------------------------------------------------------------------
# BERT (text initialisation)
# ----------------------------------------------------------------------------------------------------------
def _bert_state(name_or_path: str) -> Tuple[Dict[str, Tensor], Optional[dict]]:
    from vlptm.text import resolve_text_model

    resolved = resolve_text_model(name_or_path)
    folder = Path(resolved)
    if folder.is_dir():
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
        return _as_state_dict(folder), config
    if folder.is_file():
        return load_state_dict_file(folder), None
    from transformers import BertModel  # a hub name: let transformers download / cache it

    model = BertModel.from_pretrained(resolved)
    return model.state_dict(), model.config.to_dict()


def load_bert(encoder: VisionLanguageEncoder, name_or_path: Union[str, os.PathLike, Mapping[str, Tensor]],
              strict: bool = False) -> LoadReport:
    """Initialise the text side of an encoder from a BERT checkpoint in Hugging Face format.

    The single stream takes BERT's embeddings, all its layers and its pooler; the dual stream takes the
    embeddings, the pooler and BERT's first ``num_text_layers`` layers (the rest are reported as ignored).
    Region embeddings, object-relationship and cross-modality layers stay at their random init and are
    listed as missing.

    Args:
        encoder: either encoder; hidden size, heads, FFN size and vocabulary must match the BERT.
        name_or_path: ``"minilm-l6"`` (offline all-MiniLM-L6-v2), a folder, a weights file, a hub name such
            as ``"bert-base-uncased"`` (needs a hub), or a state dict.
        strict: raise ``KeyError`` if any BERT key is unused.

    Raises:
        ValueError: the BERT's shape or head count does not match the encoder.

    Example:
        >>> from vlptm.models import create_model, load_bert
        >>> enc = create_model("dual-small", num_text_layers=4, region_feat_dim=256)
        >>> report = load_bert(enc, "minilm-l6")
        >>> len(report.unexpected), "text_layers.3.ffn.fc1.weight" in report.loaded
        (0, True)
    """
    bert_config = None
    if isinstance(name_or_path, Mapping):
        state = dict(name_or_path)
    else:
        state, bert_config = _bert_state(str(name_or_path))
    c = encoder.config
    if bert_config:
        for ours, theirs in (("num_attention_heads", "num_attention_heads"), ("hidden_size", "hidden_size"),
                             ("intermediate_size", "intermediate_size")):
            if theirs in bert_config and bert_config[theirs] != getattr(c, ours):
                raise ValueError(f"BERT {name_or_path!r} has {theirs}={bert_config[theirs]} but the encoder has "
                                 f"{ours}={getattr(c, ours)}")
        if bert_config.get("hidden_act", c.hidden_act) != c.hidden_act:
            raise ValueError(f"BERT hidden_act {bert_config['hidden_act']!r} != encoder {c.hidden_act!r}")
    encoder_state, ignored = _split(state, ("bert.",), _BERT_ROOTS)
    available = _layer_count(encoder_state, "encoder.layer")
    rules = _text_embeddings() + _linear("pooler.dense", "pooler.dense")
    if isinstance(c, DualStreamConfig):
        wanted, target = c.num_text_layers, "text_layers"
    else:
        wanted, target = c.num_layers, "layers"
    if wanted > available:
        raise ValueError(f"the encoder has {wanted} {target} but the BERT has only {available} layers")
    for i in range(wanted):
        rules += _bert_layer(f"encoder.layer.{i}", f"{target}.{i}")
    extra = sorted(k for k in encoder_state if _layer_index(k) is not None and _layer_index(k) >= wanted)
    for key in extra:
        del encoder_state[key]
    report = _apply(encoder, LoadReport("bert", ignored=sorted(ignored + extra)), encoder_state, rules)
    if strict:
        report.raise_if_incomplete(allow_missing=True)
    return report


def _layer_index(key: str) -> Optional[int]:
    match = re.match(r"encoder\.layer\.(\d+)\.", key)
    return int(match.group(1)) if match else None
