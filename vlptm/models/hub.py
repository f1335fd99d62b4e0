"""Checkpoint files: ``save_pretrained`` / ``from_pretrained`` folders and safe state-dict loading.

A saved encoder is a folder with ``config.json`` (the config dataclass plus ``model_type``) and
``model.safetensors``. Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are read only through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Dict, Union

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_PICKLED_WEIGHT_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth")


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint holds objects other than tensors, so it is refused."""


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a weights-only pickled checkpoint.

    Args:
        path: ``*.safetensors``, or ``*.bin`` / ``*.pt`` / ``*.pth`` / ``*.ckpt``.

    Returns:
        ``{name: tensor}`` on CPU. A pickled checkpoint wrapping its weights in ``{"state_dict": ...}``
        or ``{"model": ...}`` is unwrapped.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle needs arbitrary code to load.
        ValueError: unknown suffix or not a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"unknown checkpoint format {path.suffix!r} ({path}); use .safetensors or {PICKLE_SUFFIXES}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing {path}: it is not loadable with torch.load(weights_only=True) (it pickles code or "
            f"objects, not only tensors). Re-save its state_dict, or convert it to safetensors. ({err})"
        ) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat mapping of name -> tensor")
    return dict(state)


def save_folder(folder: Union[str, os.PathLike], config: dict, state_dict: Dict[str, Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {name: t.detach().contiguous().cpu() for name, t in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "library": "vlptm"})
    return folder


def read_config(folder: Union[str, os.PathLike]) -> dict:
    """The ``config.json`` dict of a :func:`save_folder` folder."""
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; is it a save_pretrained folder?")
    return json.loads(config_path.read_text())


def read_folder(folder: Union[str, os.PathLike]):
    """Return ``(config dict, state dict)`` of a folder written by :func:`save_folder`.

    Falls back to a weights-only pickled ``pytorch_model.bin`` / ``model.pt`` when there is no
    ``model.safetensors``.
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [folder / name for name in _PICKLED_WEIGHT_NAMES if (folder / name).is_file()]
        if not pickled:
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}")
        weights = pickled[0]
        logger.warning("loading pickled weights %s (weights_only=True)", weights)
    return config, load_state_dict_file(weights)
