"""Distributed: 2 gloo processes under torchrun give the weights of one process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_pretrain_data import make_toy_world, write_recipe
from vlptm.config import load_config
from vlptm.train import pretrain
from vlptm.train.checkpoint import resolve_checkpoint
from vlptm.train.config import PretrainConfig
from vlptm.train.run_log import VALIDATION_FILE, read_log

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_available(), reason="no torch.distributed")


def _weights(run_dir: Path) -> dict:
    checkpoint = resolve_checkpoint(run_dir)
    weights = load_file(str(checkpoint / "encoder" / "model.safetensors"))
    weights.update({"heads." + k: v for k, v in load_file(str(checkpoint / "heads.safetensors")).items()})
    return weights


@pytest.mark.parametrize("pooling", ["mean", "regions"])  # regions: ranks' region sets differ in size
def test_two_gloo_ranks_match_one_process(tmp_path, pooling):
    toy = make_toy_world(tmp_path / "toy", num_images=40, seed=2)
    sections = dict(
        model_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        tasks={"weights": {"mlm": 1.0, "mrfr": 1.0, "mrc": 1.0, "itm": 1.0, "itc": 1.0}, "sampling": "sum",
               "itc_embed_dim": 16, "itc_pooling": pooling},
        optim={"lr": 2e-3, "warmup_steps": 1, "max_steps": 6},
    )
    single = write_recipe(tmp_path / "single.yaml", toy, tmp_path / "single",
                          data={"sources": [toy], "batch_size": 8, "max_regions": 4, "bucket_batches": 4}, **sections)
    pretrain(load_config(PretrainConfig, single))

    ddp = write_recipe(tmp_path / "ddp.yaml", toy, tmp_path / "ddp",
                       data={"sources": [toy], "batch_size": 4, "max_regions": 4, "bucket_batches": 4},
                       validation={"sources": [toy], "every": 3, "max_images": 8}, **sections)  # on every rank
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "vlptm.cli", "pretrain", "--config", str(ddp)],
                            env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 rank(s)" in result.stdout + result.stderr

    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"DDP weights differ from the single-process run by {worst}"
    # rank 0 alone logged; losses over equal per-rank counts (ITC, ITM) average to the single run's
    single_log, ddp_log = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    assert [e["step"] for e in ddp_log] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in read_log(tmp_path / "ddp" / VALIDATION_FILE)] == [3, 6]
    for x, y in zip(single_log, ddp_log):
        assert y["itc"] == pytest.approx(x["itc"], abs=1e-4)
        assert y["itm"] == pytest.approx(x["itm"], abs=1e-4)
