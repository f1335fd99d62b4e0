"""Atomic training checkpoints: model, optimiser, scheduler, RNG states and data position.

Layout of a run directory::

    RUN/
      checkpoint -> checkpoints/step-00001000     symlink to the latest complete checkpoint
      checkpoints/step-00001000/
          encoder/config.json, encoder/model.safetensors   the encoder (vlptm.models.from_pretrained)
          heads.safetensors                                 objective heads (MLM, MRM, ITM, ITC)
          trainer_state.pt                                  optimiser, scheduler, scaler, RNG, data position
          config.yaml                                       the run's recipe

A checkpoint is written into a temporary directory, every file and the directory are fsynced, the
directory is renamed to its final name, and only then is the ``checkpoint`` symlink replaced (a new
symlink renamed over the old one with ``os.replace``, which is atomic). A crash at any moment leaves
``RUN/checkpoint`` pointing at a complete checkpoint, the old or the new one; leftovers of an interrupted
write are removed when the run resumes.

``trainer_state.pt`` holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from vlptm.models.hub import load_state_dict_file, read_folder

logger = logging.getLogger(__name__)

LATEST = "checkpoint"
CHECKPOINTS = "checkpoints"
ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
_TMP = ".tmp-"


# -- RNG states -------------------------------------------------------------------------------------------
def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- durability helpers -----------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _heads_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every non-encoder tensor of a PretrainingModel, minus weights tied to encoder ones."""
    encoder_ptrs = {p.data_ptr() for p in model.encoder.state_dict().values()}
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
            if not name.startswith("encoder.") and tensor.data_ptr() not in encoder_ptrs}


# -- save -------------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: Union[str, os.PathLike], step: int, model: nn.Module, trainer_state: Dict[str, Any],
                    config_yaml: str = "", keep: int = 2) -> Path:
    """Write ``RUN/checkpoints/step-NNNNNNNN`` atomically and point ``RUN/checkpoint`` at it.

    Args:
        run_dir: the run directory.
        step: optimiser steps done.
        model: the (unwrapped) :class:`~vlptm.objectives.PretrainingModel`.
        trainer_state: optimiser/scheduler/scaler states, RNG states, data position (tensors and plain
            containers only).
        config_yaml: the recipe, written beside the weights.
        keep: step checkpoints to keep (older ones are deleted after the new one is in place).

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    parent = run_dir / CHECKPOINTS
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / f"step-{step:08d}"
    tmp = parent / f"{_TMP}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.encoder.save_pretrained(tmp / ENCODER_DIR)
    save_file(_heads_state(model), str(tmp / HEADS_FILE), metadata={"format": "pt", "library": "vlptm"})
    torch.save(trainer_state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(config_yaml)
    _fsync_tree(tmp)
    if final.exists():  # a checkpoint of this step from an earlier attempt: move it aside first
        stale = parent / f"{_TMP}old-{final.name}-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_path(parent)
    link_tmp = run_dir / f"{_TMP}{LATEST}-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(Path(CHECKPOINTS) / final.name, link_tmp)
    os.replace(link_tmp, run_dir / LATEST)
    _fsync_path(run_dir)
    _prune(parent, keep, final)
    return final


def _prune(parent: Path, keep: int, current: Path) -> None:
    steps = sorted(p for p in parent.glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(1, keep))]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def clean_partial_checkpoints(run_dir: Union[str, os.PathLike]) -> None:
    """Remove temporaries of an interrupted checkpoint write (call before resuming)."""
    run_dir = Path(run_dir)
    for path in list((run_dir / CHECKPOINTS).glob(f"{_TMP}*")) + list(run_dir.glob(f"{_TMP}*")):
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


# -- load -------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: Union[str, os.PathLike]) -> Optional[Path]:
    """The checkpoint directory a path names: a run directory (its latest), ``RUN/checkpoint`` or a step
    directory; ``None`` if a run directory has no checkpoint yet."""
    path = Path(path)
    if (path / LATEST).exists():
        path = path / LATEST
    path = path.resolve()
    if (path / STATE_FILE).is_file() and (path / ENCODER_DIR).is_dir():
        return path
    return None


def latest_step(run_dir: Union[str, os.PathLike]) -> int:
    """Step of the run's latest checkpoint (from its directory name), -1 when there is none."""
    checkpoint = resolve_checkpoint(run_dir)
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else -1


def load_trainer_state(checkpoint: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``trainer_state.pt`` of a checkpoint directory (``weights_only`` loading)."""
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)


def load_model_weights(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True) -> Dict[str, list]:
    """Load a checkpoint's (or a ``save_pretrained`` encoder folder's) weights into a PretrainingModel.

    Args:
        model: the :class:`~vlptm.objectives.PretrainingModel` to fill.
        path: a run directory, ``RUN/checkpoint``, a step directory, or an encoder folder
            (``config.json`` + ``model.safetensors``), e.g. for staged pretraining.
        strict: require every head of ``model`` to be in the checkpoint (``False`` for staged pretraining
            with a different task set: missing heads keep their fresh initialisation).

    Returns:
        ``{"missing_heads": [...], "unexpected_heads": [...]}``.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        RuntimeError: encoder weights that do not fit (a different architecture), or missing heads when
            ``strict``.
    """
    path = Path(path)
    checkpoint = resolve_checkpoint(path)
    encoder_dir = checkpoint / ENCODER_DIR if checkpoint else path
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint or encoder folder at {path}")
    _, encoder_state = read_folder(encoder_dir)
    model.encoder.load_state_dict(encoder_state, strict=True)
    report: Dict[str, list] = {"missing_heads": [], "unexpected_heads": []}
    expected = set(_heads_state(model))
    if checkpoint is not None and (checkpoint / HEADS_FILE).is_file():
        heads = load_state_dict_file(checkpoint / HEADS_FILE)
        current = model.state_dict()
        usable = {k: v for k, v in heads.items() if k in expected and current[k].shape == v.shape}
        model.load_state_dict(usable, strict=False)
        report["missing_heads"] = sorted(expected - set(usable))
        report["unexpected_heads"] = sorted(set(heads) - set(usable))
    else:
        report["missing_heads"] = sorted(expected)
    if strict and report["missing_heads"]:
        raise RuntimeError(f"checkpoint {path} lacks heads {report['missing_heads']}")
    return report
