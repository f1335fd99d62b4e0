"""Exact resume: a run SIGKILLed at a random step and resumed with --resume ends with the same weights."""
from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_pretrain_data import make_toy_world, write_recipe
from vlptm.cli import main
from vlptm.config import load_config
from vlptm.train import pretrain
from vlptm.train.checkpoint import latest_step, resolve_checkpoint
from vlptm.train.config import PretrainConfig

MAX_STEPS = 14


def _cli(*args: str) -> list:
    return [sys.executable, "-m", "vlptm.cli", *args]


def _env() -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _weights(run_dir: Path) -> dict:
    checkpoint = resolve_checkpoint(run_dir)
    weights = load_file(str(checkpoint / "encoder" / "model.safetensors"))
    weights.update({"heads." + k: v for k, v in load_file(str(checkpoint / "heads.safetensors")).items()})
    return weights


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return root, make_toy_world(root / "toy", num_images=40, seed=1)


def test_sigkill_and_resume_matches_uninterrupted_run(recipe_dir, caplog):
    root, toy = recipe_dir
    sections = dict(deterministic=True, save_every=1,  # dropout stays on: RNG states must be restored too
                    optim={"lr": 1e-3, "warmup_steps": 3, "max_steps": MAX_STEPS, "accum_steps": 2},
                    tasks={"weights": {"mlm": 1.0, "mrfr": 1.0, "mrc_kl": 1.0, "itm": 1.0, "itc": 1.0},
                           "sampling": "ratio", "itm_negatives": "hard", "itc_embed_dim": 16})
    straight = write_recipe(root / "straight.yaml", toy, root / "straight", **sections)
    pretrain(load_config(PretrainConfig, straight))

    killed_recipe = write_recipe(root / "killed.yaml", toy, root / "killed", **sections)
    kill_at = random.Random().randint(2, MAX_STEPS - 5)
    process = subprocess.Popen(_cli("pretrain", "--config", str(killed_recipe)), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_step(root / "killed") < kill_at and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    reached = latest_step(root / "killed")
    assert kill_at <= reached < MAX_STEPS, f"the run was not killed mid-way (checkpoint at {reached})"

    with caplog.at_level(logging.INFO, logger="vlptm.train.pretrain"):
        assert main(["pretrain", "--config", str(killed_recipe), "--resume"]) == 0
    assert f"at step {reached}" in caplog.text and latest_step(root / "killed") == MAX_STEPS

    a, b = _weights(root / "straight"), _weights(root / "killed")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed weights differ by {worst} (killed after step {reached})"
    # the log reads like one run: every step once
    from vlptm.train.run_log import read_log

    assert [e["step"] for e in read_log(root / "killed")] == list(range(1, MAX_STEPS + 1))


def test_checkpoints_are_atomic_and_pruned(recipe_dir, tmp_path):
    root, toy = recipe_dir
    recipe = write_recipe(tmp_path / "r.yaml", toy, tmp_path / "run", save_every=2, keep_checkpoints=2,
                          optim={"lr": 1e-3, "warmup_steps": 1, "max_steps": 6})
    run_dir = pretrain(load_config(PretrainConfig, recipe))
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["step-00000004", "step-00000006"]
    assert os.readlink(run_dir / "checkpoint") == os.path.join("checkpoints", "step-00000006")
    # a half-written checkpoint directory (crash during save) is ignored and cleaned on resume
    partial = run_dir / "checkpoints" / ".tmp-step-00000008-123"
    partial.mkdir()
    (partial / "trainer_state.pt").write_bytes(b"\0" * 10)
    assert latest_step(run_dir) == 6
    pretrain(load_config(PretrainConfig, recipe, ["--optim.max_steps=7"]), resume=True)
    assert not partial.exists() and latest_step(run_dir) == 7
