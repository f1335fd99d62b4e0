"""YAML recipes with ``--key=value`` overrides, checked against nested dataclasses.

A recipe is a YAML mapping whose keys are the fields of a config dataclass; a field that is itself a
dataclass takes a nested mapping. Command-line overrides use dotted keys (``--optim.lr=1e-4``,
``--model_overrides.num_layers=3``); values are parsed against the field's type (ints, floats, bools,
strings, ``none`` for optional fields, YAML lists and mappings; rules: :mod:`vlptm.coercion`). Unknown keys
and ill-typed values raise :class:`ConfigError`.

Example:
    >>> from vlptm.train.config import PretrainConfig
    >>> cfg = build_config(PretrainConfig, {"seed": 5}, ["--optim.lr=3e-4", "--model_overrides.num_layers=3"])
    >>> cfg.seed, cfg.optim.lr, cfg.model_overrides
    (5, 0.0003, {'num_layers': '3'})
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar, Union

import yaml

from vlptm.coercion import FieldTypeError, UnknownFieldError, build_dataclass, field_types, unwrap_optional
from vlptm.models.config import parse_overrides

_C = TypeVar("_C")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config dataclass."""


def from_dict(cls: Type[_C], data: Mapping[str, Any], where: str = "") -> _C:
    """Build dataclass ``cls`` from a (nested) mapping; missing fields keep their defaults.

    Values are checked and converted by :func:`vlptm.coercion.coerce`.

    Raises:
        ConfigError: unknown keys or values that do not fit the field types.
    """
    try:
        return build_dataclass(cls, data, where)
    except (UnknownFieldError, FieldTypeError) as err:
        raise ConfigError(str(err)) from err


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict of a config dataclass (YAML/JSON serialisable)."""
    return dataclasses.asdict(config)


def apply_overrides(config: _C, overrides: Iterable[str]) -> _C:
    """Return a copy of ``config`` with ``--dotted.key=value`` overrides applied (type-checked).

    Raises:
        ConfigError: an unknown key, a malformed override or a value of the wrong type.
    """
    try:
        parsed = parse_overrides(list(overrides))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    data = to_dict(config)
    for dotted, value in parsed.items():
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override --{dotted}: {part!r} is not a section of the config")
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override --{dotted}: not a config key")
        leaf = parts[-1]
        section_open = isinstance(node, dict) and parts[:-1] and _is_open_mapping(type(config), parts[:-1])
        if leaf not in node and not section_open:
            raise ConfigError(f"override --{dotted}: unknown key {leaf!r}; valid keys: {sorted(node)}")
        node[leaf] = value
    return from_dict(type(config), data)


def _is_open_mapping(cls: type, path: list) -> bool:
    """Whether the field at ``path`` is a free-form ``Dict`` (any key may be added)."""
    tp: Any = cls
    for part in path:
        if not dataclasses.is_dataclass(tp):
            return False
        tp = unwrap_optional(field_types(tp)[part])
    return typing.get_origin(tp) is dict


def build_config(cls: Type[_C], data: Optional[Mapping[str, Any]] = None, overrides: Iterable[str] = ()) -> _C:
    """``cls`` from a mapping plus ``--key=value`` overrides."""
    return apply_overrides(from_dict(cls, data or {}), overrides)


def load_config(cls: Type[_C], path: Union[str, os.PathLike], overrides: Iterable[str] = ()) -> _C:
    """Read a YAML recipe into ``cls`` and apply overrides.

    Raises:
        FileNotFoundError: no such recipe.
        ConfigError: invalid YAML or keys/values that do not fit ``cls``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a YAML mapping, got {type(data).__name__}")
    return build_config(cls, data, overrides)


def save_config(config: Any, path: Union[str, os.PathLike]) -> None:
    """Write a config dataclass as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
