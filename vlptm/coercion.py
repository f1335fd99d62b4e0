"""Values checked and converted against dataclass field annotations: one rule set for every config.

:func:`coerce` turns a value into a field's annotated type, whether it is a Python or YAML value or a
string from a ``--key=value`` command line (``"256"``, ``"true"``, ``"none"``, ``"5e-4"``, ``"[1, 2]"``,
``"{mlm: 1}"``); :func:`build_dataclass` builds a (nested) config dataclass from a mapping with it,
:func:`set_dotted` sets dotted keys (``optim.lr``, ``selection.fixed_boxes``) of a built one and
:func:`to_dict` turns one back into plain dicts. The config front-ends (:mod:`vlptm.config`,
:mod:`vlptm.models.config`, :mod:`vlptm.detection.config`) all use these and raise
:class:`UnknownFieldError` (a ``KeyError``) and :class:`FieldTypeError` (a ``TypeError``) as the exceptions
they document.

What each annotation accepts:

- ``Any``: the value as given.
- ``bool``: a bool, or ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case); never an int.
- ``int``: an integer (not a bool, not a float), or a string ``int()`` reads.
- ``float``: a real number (not a bool; ints become floats), or a string ``float()`` reads (``"5e-4"``).
- ``str``: a string only.
- ``Optional[X]`` / ``Union[X, Y]``: ``None`` (or ``"none"`` / ``"null"``) where ``None`` is a member,
  else the first member the value fits.
- ``List[X]``, ``Tuple[X, ...]``, ``Tuple[X, Y]``, ``Dict[K, V]``: a list/tuple or a mapping (a string is
  read as YAML), every item checked; a list becomes a tuple for a tuple field.
- a dataclass: an instance of it, or a mapping of its fields (missing fields keep their defaults).

Example:
    >>> from vlptm.detection.config import RpnConfig, SelectionConfig
    >>> selection = build_dataclass(SelectionConfig, {"max_boxes": "36", "fixed_boxes": "none", "nms_threshold": 0})
    >>> selection.max_boxes, selection.fixed_boxes, selection.nms_threshold
    (36, None, 0.0)
    >>> build_dataclass(RpnConfig, {"anchor_sizes": "[16, 32]", "nms_threshold": "6e-1"}).anchor_sizes
    (16, 32)
"""
from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, Callable, Dict, Mapping, Type, TypeVar

import yaml

__all__ = ["FieldTypeError", "UnknownFieldError", "field_types", "unwrap_optional", "coerce", "coerce_fields",
           "build_dataclass", "set_dotted", "to_dict"]

_C = TypeVar("_C")
_NoneType = type(None)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"none", "null"})


class FieldTypeError(TypeError):
    """A value that does not fit a field's annotation; the message names the field and the expected type."""


class UnknownFieldError(KeyError):
    """A key that is not a field of the dataclass; the message lists the valid keys."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def field_types(cls: type) -> Dict[str, Any]:
    """``{field name: resolved annotation}`` of dataclass ``cls``, in field order.

    Example:
        >>> from vlptm.detection.config import SelectionConfig
        >>> field_types(SelectionConfig)["fixed_boxes"]
        typing.Optional[int]
    """
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unwrap_optional(tp: Any) -> Any:
    """``X`` for ``Optional[X]``; any other annotation unchanged."""
    if _is_union(tp):
        members = [arg for arg in typing.get_args(tp) if arg is not _NoneType]
        if len(members) == 1:
            return members[0]
    return tp


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (rules in the module docstring).

    Args:
        tp: a resolved annotation (see :func:`field_types`).
        value: a Python/YAML value, or a command-line string.
        where: the field's dotted name, for error messages (``"optim.lr"``).

    Returns:
        The value as ``tp``: a parsed number or bool, ``None``, a list/tuple/dict of checked items, or
        a dataclass instance.

    Raises:
        FieldTypeError: ``value`` does not fit ``tp``, or ``tp`` is an annotation configs do not use.
        UnknownFieldError: a mapping for a (nested) dataclass has a key that is not one of its fields.

    Example:
        >>> from typing import Dict, Optional
        >>> coerce(Optional[int], "none", "fixed_boxes"), coerce(Dict[str, float], "{mlm: 1}", "weights")
        (None, {'mlm': 1.0})
        >>> try:
        ...     coerce(int, "wide", "hidden_size")
        ... except TypeError as err:
        ...     print(err)
        hidden_size: expected int, got 'wide'
    """
    if tp is Any:
        return value
    if _is_union(tp):
        return _coerce_union(tp, value, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise FieldTypeError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_dataclass(tp, value, where)
    origin = typing.get_origin(tp) or (tp if tp in (list, tuple, dict) else None)
    if origin in (list, tuple, dict):
        return _coerce_container(tp, origin, value, where)
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    raise FieldTypeError(f"{where}: unsupported field type {_type_name(tp)}")


def coerce_fields(cls: type, data: Mapping[str, Any], where: str = "", noun: str = "key") -> Dict[str, Any]:
    """``data`` with every value coerced to the type of the ``cls`` field it names.

    Args:
        cls: a dataclass.
        data: field name -> value (a subset of the fields).
        where: dotted name of ``cls`` within an enclosing config, prefixed to field names in messages.
        noun: what the keys are called in the unknown-key message (``"key"``, ``"override"``).

    Raises:
        UnknownFieldError: a key of ``data`` is not a field of ``cls``.
        FieldTypeError: a value does not fit its field's type.
    """
    types_by_name = field_types(cls)
    unknown = sorted((key for key in data if key not in types_by_name), key=str)
    if unknown:
        raise UnknownFieldError(
            f"unknown {noun}(s) {unknown} in {where or cls.__name__}; valid keys: {sorted(types_by_name)}")
    return {key: coerce(types_by_name[key], value, f"{where}.{key}" if where else key) for key, value in data.items()}


def build_dataclass(cls: Type[_C], data: Mapping[str, Any], where: str = "") -> _C:
    """Dataclass ``cls`` from a (nested) mapping, values coerced; missing fields keep their defaults.

    Raises:
        UnknownFieldError: a key (at any depth) that is not a field.
        FieldTypeError: a value that does not fit its field's type.
    """
    return cls(**coerce_fields(cls, data, where))


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict of a config dataclass (``dataclasses.asdict``: sections become dicts, tuples stay
    tuples); :func:`build_dataclass` reads it back."""
    return dataclasses.asdict(config)


def set_dotted(config: _C, values: Mapping[str, Any], prefix: str = "") -> _C:
    """A copy of config dataclass ``config`` with values set at dotted keys, each checked by :func:`coerce`.

    A key walks nested sections (``"optim.lr"``, ``"selection.fixed_boxes"``); its last part must be a
    field of the section it ends in, except inside a free-form ``Dict`` field, which takes new keys too
    (``"tasks.weights.itm"``). A dataclass field given a mapping is rebuilt from it (missing fields take
    their defaults); a value given as a string is parsed as the field's type. The copy is rebuilt from
    plain dicts, so no mutable value is shared with ``config``.

    Args:
        config: a config dataclass instance.
        values: dotted key -> value, applied in order.
        prefix: put before a dotted key in the messages of unknown sections and keys (``"override --"``
            spells it as on a command line).

    Returns:
        A new instance of ``type(config)``.

    Raises:
        UnknownFieldError: a part of a key that is not a section, or a last part that is not a field.
        FieldTypeError: a value that does not fit its field's type.

    Example:
        >>> from vlptm.train.config import PretrainConfig
        >>> cfg = set_dotted(PretrainConfig(), {"optim.lr": "3e-4", "tasks.weights.mrc": 2})
        >>> cfg.optim.lr, cfg.tasks.weights["mrc"]
        (0.0003, 2.0)
        >>> try:
        ...     set_dotted(cfg, {"optim.lrr": 1.0})
        ... except KeyError as err:
        ...     print(err)  # doctest: +ELLIPSIS
        optim.lrr: unknown key 'lrr'; valid keys: ['accum_steps', 'betas', 'eps', ...]
    """
    data = to_dict(config)
    for dotted, value in values.items():
        *path, leaf = dotted.split(".")
        node, tp = data, type(config)
        for part in path:
            if not isinstance(node.get(part), dict):
                raise UnknownFieldError(f"{prefix}{dotted}: {part!r} is not a section of the config")
            node, tp = node[part], _member_type(tp, part)
        if dataclasses.is_dataclass(tp):
            known, leaf_tp = leaf in node, field_types(tp).get(leaf)
        elif typing.get_origin(tp) is dict:  # free-form: any key of the key type
            key_tp, leaf_tp = typing.get_args(tp) or (Any, Any)
            leaf, known = coerce(key_tp, leaf, dotted), True
        else:  # a mapping inside an untyped value: only its keys
            known, leaf_tp = leaf in node, Any
        if not known:
            raise UnknownFieldError(f"{prefix}{dotted}: unknown key {leaf!r}; valid keys: {sorted(node, key=str)}")
        value = coerce(leaf_tp, value, dotted)
        is_section = dataclasses.is_dataclass(value) and not isinstance(value, type)
        node[leaf] = to_dict(value) if is_section else value  # a later key may walk into it
    return build_dataclass(type(config), data)


def _member_type(tp: Any, key: str) -> Any:
    """Annotation of the member ``key`` of a mapping annotated ``tp`` (a dataclass or ``Dict``), else ``Any``."""
    if dataclasses.is_dataclass(tp):
        return unwrap_optional(field_types(tp)[key])
    if typing.get_origin(tp) is dict and typing.get_args(tp):
        return unwrap_optional(typing.get_args(tp)[1])
    return Any


# ----------------------------------------------------------------------------------------------------------
# Per kind of annotation
# ----------------------------------------------------------------------------------------------------------
def _is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is typing.Union or origin is getattr(types, "UnionType", typing.Union)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _mismatch(tp: Any, value: Any, where: str) -> FieldTypeError:
    return FieldTypeError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _coerce_union(tp: Any, value: Any, where: str) -> Any:
    members = typing.get_args(tp)
    if _NoneType in members and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
        return None
    errors = []
    for member in members:
        if member is _NoneType:
            continue
        try:
            return coerce(member, value, where)
        except FieldTypeError as err:
            errors.append(str(err))
    if len(errors) == 1:
        raise FieldTypeError(f"{errors[0]} (or none)")
    raise FieldTypeError(f"{where}: expected {_type_name(tp)}, got {value!r} ({'; '.join(errors)})")


def _coerce_container(tp: Any, origin: type, value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise FieldTypeError(f"{where}: expected {_type_name(tp)}, got {value!r} (not valid YAML)") from err
    args = typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _mismatch(tp, value, where)
        key_tp, value_tp = args or (Any, Any)
        return {coerce(key_tp, k, f"{where}.{k}"): coerce(value_tp, v, f"{where}.{k}") for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise _mismatch(tp, value, where)
    if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: Tuple[X, Y]
        if len(value) != len(args):
            raise FieldTypeError(f"{where}: expected {_type_name(tp)} ({len(args)} items), got {value!r}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    items = [coerce(item_tp, item, f"{where}[{i}]") for i, (item_tp, item) in enumerate(zip(item_types, value))]
    return tuple(items) if origin is tuple else items


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise FieldTypeError(f"{where}: expected bool (true/false), got {value!r}")


def _number(tp: type, accepted: type) -> Callable[[Any, str], Any]:
    """Converter to ``tp`` from an ``accepted`` number (never a bool) or a string ``tp()`` reads."""
    def convert(value: Any, where: str) -> Any:
        if isinstance(value, accepted) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise _mismatch(tp, value, where)

    return convert


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise _mismatch(str, value, where)


_SCALARS: Dict[type, Callable[[Any, str], Any]] = {
    bool: _to_bool, int: _number(int, numbers.Integral), float: _number(float, numbers.Real), str: _to_str}
