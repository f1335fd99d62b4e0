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

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Type, TypeVar, Union

import yaml

from vlptm.coercion import FieldTypeError, UnknownFieldError, build_dataclass, set_dotted, to_dict
from vlptm.models.config import parse_overrides

__all__ = ["ConfigError", "from_dict", "to_dict", "apply_overrides", "build_config", "load_config", "save_config"]

_C = TypeVar("_C")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config dataclass."""


@contextlib.contextmanager
def _as_config_error() -> Iterator[None]:
    """Re-raise :mod:`vlptm.coercion`'s unknown-key and type errors as :class:`ConfigError`."""
    try:
        yield
    except (UnknownFieldError, FieldTypeError) as err:
        raise ConfigError(str(err)) from err


def from_dict(cls: Type[_C], data: Mapping[str, Any], where: str = "") -> _C:
    """Build dataclass ``cls`` from a (nested) mapping; missing fields keep their defaults.

    Values are checked and converted by :func:`vlptm.coercion.build_dataclass`.

    Raises:
        ConfigError: unknown keys or values that do not fit the field types.
    """
    with _as_config_error():
        return build_dataclass(cls, data, where)


def apply_overrides(config: _C, overrides: Iterable[str]) -> _C:
    """Return a copy of ``config`` with ``--dotted.key=value`` overrides applied (type-checked).

    Keys walk nested sections; new keys are accepted only inside free-form ``Dict`` fields
    (``--tasks.weights.itm=1.5``). The rules are :func:`vlptm.coercion.set_dotted`'s.

    Raises:
        ConfigError: an unknown key, a malformed override or a value of the wrong type.
    """
    try:
        parsed = parse_overrides(list(overrides))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    with _as_config_error():
        return set_dotted(config, parsed, prefix="override --")


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
