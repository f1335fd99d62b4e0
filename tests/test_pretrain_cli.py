"""End-to-end CPU run of ``vlptm pretrain`` and ``vlptm plot-log`` on the toy world; staged init; bad input."""
from __future__ import annotations

import pytest
import torch

from test_pretrain_data import make_toy_world, write_recipe
from vlptm.cli import main
from vlptm.config import ConfigError, load_config
from vlptm.train import load_pretraining_model
from vlptm.train.checkpoint import latest_step, resolve_checkpoint
from vlptm.train.config import PretrainConfig
from vlptm.train.run_log import read_log


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("cli") / "toy", num_images=32, seed=4)


def test_pretrain_command_logs_checkpoints_and_plots(toy, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", toy, tmp_path / "run")
    assert main(["pretrain", "--config", str(recipe), "--optim.max_steps=6", "--tasks.sampling=sum",
                 "--masking.mode=joint", "--masking.text_scheme=span", "--data.bucket_batches=2"]) == 0
    run = tmp_path / "run"
    log = read_log(run)
    assert [e["step"] for e in log] == list(range(1, 7))
    assert {"loss", "mlm", "mrfr", "mrc", "itm", "itc", "mlm_acc", "lr", "examples_per_s"} <= set(log[0])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert latest_step(run) == 6
    assert load_config(PretrainConfig, run / "config.yaml").masking.text_scheme == "span"

    png = tmp_path / "curves.png"
    assert main(["plot-log", str(run), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-log", str(run), "--out", str(png), "--keys", "nope"]) == 2

    model = load_pretraining_model(str(run))
    batch = {"input_ids": torch.tensor([[101, 2417, 4418, 102]])}
    assert model.embed_text(batch).shape == (1, 16)


def test_staged_pretraining_starts_from_a_checkpoint(toy, tmp_path):
    first = write_recipe(tmp_path / "a.yaml", toy, tmp_path / "a", optim={"lr": 1e-3, "warmup_steps": 1,
                                                                          "max_steps": 2})
    assert main(["pretrain", "--config", str(first)]) == 0
    # stage 2: another task set and a fresh optimiser, weights from stage 1 (init_from is one line)
    second = write_recipe(tmp_path / "b.yaml", toy, tmp_path / "b", init_from=str(tmp_path / "a" / "checkpoint"),
                          tasks={"weights": {"mlm": 1.0, "itc": 1.0}, "itc_embed_dim": 16},
                          optim={"lr": 0.0, "warmup_steps": 0, "max_steps": 1, "schedule": "constant"})
    assert main(["pretrain", "--config", str(second)]) == 0
    a = load_pretraining_model(str(tmp_path / "a"))
    b = load_pretraining_model(str(tmp_path / "b"))
    for (name, pa), (_, pb) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name  # lr 0: stage 2 kept stage 1's encoder exactly
    assert torch.equal(a.itc.text_proj.weight, b.itc.text_proj.weight)
    assert b.mrm is None and resolve_checkpoint(tmp_path / "b") is not None


def test_bad_recipes_fail_clearly(toy, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", toy, tmp_path / "run")
    assert main(["pretrain", "--config", str(recipe), "--optim.lr=fast"]) == 2
    assert main(["pretrain", "--config", str(recipe), "--optim.nope=1"]) == 2
    assert main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(PretrainConfig, recipe, ["--data.sources=[{captions: a, featurez: b}]"])
    with pytest.raises(ValueError, match="unknown task"):
        main(["pretrain", "--config", str(recipe), "--tasks.weights={mlm: 1, vqa: 1}"])
    with pytest.raises(ValueError, match="fp16 autocast needs CUDA"):
        main(["pretrain", "--config", str(recipe), "--precision=fp16", "--device=cpu"])
