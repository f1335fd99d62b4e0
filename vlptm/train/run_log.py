"""Run logs on rank 0: a JSONL file, TensorBoard event files and a tqdm progress bar.

``RUN/log.jsonl`` has one JSON object per logged step (``step``, ``epoch``, ``lr``, ``loss``, every task's
loss and metric, ``examples_per_s``, ``elapsed_s``); ``vlptm plot-log RUN`` draws it. Held-out evaluations
(``validation`` in the recipe) go to ``RUN/validation.jsonl``, read with ``read_log(RUN / VALIDATION_FILE)``.
TensorBoard events go to ``RUN/tensorboard/`` (``train/<key>`` and ``val/<key>``). After a resume, entries
past the resumed step are dropped from all of them, so the logs read like one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Union

LOG_FILE = "log.jsonl"
VALIDATION_FILE = "validation.jsonl"
_FILES = {"train": LOG_FILE, "val": VALIDATION_FILE}  # log group -> file
TENSORBOARD_DIR = "tensorboard"
_SHOWN = ("mlm", "mrfr", "mrc", "mrc_kl", "itm", "itc")  # losses shown on the progress bar


def read_log(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Entries of a run's ``log.jsonl`` (``path`` is the run directory or the file); a torn last line is
    ignored, and for a step logged twice the later entry wins."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    by_step: Dict[int, Dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "step" in entry:
            by_step[int(entry["step"])] = entry
    return [by_step[step] for step in sorted(by_step)]


class RunLogger:
    """Writes log entries to JSONL and TensorBoard and shows a progress bar (all no-ops off rank 0).

    Args:
        run_dir: the run directory.
        enabled: False on ranks other than 0.
        total_steps: length of the progress bar.
        start_step: the step the run (re)starts from; later log entries from an earlier attempt are dropped.
        progress: show a tqdm bar.
    """

    def __init__(self, run_dir: Union[str, os.PathLike], *, enabled: bool = True, total_steps: int = 0,
                 start_step: int = 0, progress: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._bar = None
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / LOG_FILE
        self._files: Dict[str, Any] = {}  # group -> open file, opened at its first entry
        for name in _FILES.values():
            _truncate(self.run_dir / name, start_step)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=start_step if start_step else None)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc="pretrain")

    def log(self, entry: Dict[str, Any], group: str = "train") -> None:
        """Record one entry (must hold ``step``) of ``group`` ("train": ``log.jsonl``, "val":
        ``validation.jsonl``); numbers go to TensorBoard as ``<group>/<key>``."""
        if not self.enabled:
            return
        clean = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in entry.items()}
        if group not in self._files:
            self._files[group] = open(self.run_dir / _FILES[group], "a", buffering=1)
        self._files[group].write(json.dumps(clean) + "\n")
        step = int(entry["step"])
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{group}/{key}", value, step)
        if self._bar is not None and group == "train":
            shown = {k: f"{v:.3g}" for k, v in entry.items()
                     if isinstance(v, float) and (k == "loss" or k in _SHOWN or k == "examples_per_s")}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, message: str) -> None:
        """A line of text that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.flush()
        self._tb.close()
        for file in self._files.values():
            file.close()


def _truncate(path: Path, start_step: int) -> None:
    """Drop the entries of a log file past ``start_step`` (atomically)."""
    if not path.is_file():
        return
    kept = [entry for entry in read_log(path) if entry["step"] <= start_step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for entry in kept:
            f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
