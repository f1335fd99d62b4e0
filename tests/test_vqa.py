"""VQA fine-tuning: head, loss, batches, checkpoint sources, fit on a generated world, save/load, predict."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlptm.data.images import load_image_tensor
from vlptm.data.readers import QuestionRecord
from vlptm.data.scenes import generate_world
from vlptm.detection import build_extractor
from vlptm.detection.config import config_to_dict
from vlptm.features import FeatureStoreWriter
from vlptm.features.extract import list_images
from vlptm.models import create_model
from vlptm.structures import RegionFeatures
from vlptm.tasks import (
    MajorityAnswerBaseline,
    VQAExamples,
    VQAFineTuner,
    VQAHead,
    VQAModel,
    VQAOptions,
    collate_vqa,
    split_by_image,
    vqa_loss,
)

FEATURE_SIDE = 64


# -- a small generated world with real (grid) features ---------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """80 generated 64-px scenes, their questions, and EfficientNet-Lite0 grid features in a feature store."""
    root = tmp_path_factory.mktemp("vqa_world")
    generate_world(root / "world", num_images=80, seed=11, image_size=64)
    extractor = build_extractor("grid-effnet-lite0", min_size=FEATURE_SIDE, max_size=FEATURE_SIDE, grid_size=3)
    items = list_images(root / "world" / "vqa.json")
    config = {"kind": "GridExtractor", "config": config_to_dict(extractor.config)}  # as `vlptm extract` records it
    with FeatureStoreWriter(root / "store", feature_dim=extractor.feature_dim, extractor_name="grid-effnet-lite0",
                            extractor_config_hash="grid-test", extractor_config=config, writer_name="main") as writer:
        for start in range(0, len(items), 16):
            chunk = items[start:start + 16]
            for item, regions in zip(chunk, extractor.extract([load_image_tensor(i.path) for i in chunk])):
                writer.add(item.image_id, regions)
    data = VQAExamples.load(root / "world" / "vqa.json", root / "store")
    train, val = data.split_by_image(0.25, seed=0)
    return {"root": root, "extractor": extractor, "train": train, "val": val, "feature_dim": extractor.feature_dim}


@pytest.fixture(scope="module")
def tuned(world):
    torch.manual_seed(0)
    tuner = VQAFineTuner.from_pretrained("single-tiny", region_feat_dim=world["feature_dim"],
                                         extractor=world["extractor"])
    history = tuner.fit(world["train"], world["val"], epochs=6, lr=3e-3, head_lr_mult=1.0, warmup_ratio=0.05,
                        batch_size=16, device="cpu", log_every=10)
    return tuner, history


def test_fit_beats_the_majority_baseline(world, tuned):
    tuner, history = tuned
    majority = MajorityAnswerBaseline().fit(world["train"].records).evaluate(world["val"].records)["accuracy"]
    metrics = tuner.evaluate(world["val"])
    assert metrics["n"] == len(world["val"]) and metrics["missing_images"] == 0
    assert metrics["accuracy"] >= majority + 0.12, (metrics["accuracy"], majority)
    assert set(metrics["by_question_type"]) <= {"color", "shape", "size", "count", "exists", "spatial"}
    assert {"yes/no", "number", "other"} <= set(metrics["by_answer_type"])
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    assert any("val_accuracy" in h for h in history)


def test_saved_and_loaded_model_predicts_the_same(world, tuned, tmp_path):
    tuner, _ = tuned
    folder = tuner.save(tmp_path / "vqa")
    assert (folder / "extractor" / "config.json").is_file()
    loaded = VQAFineTuner.load(folder)
    assert loaded.answers.answers == tuner.answers.answers
    assert loaded.options.set_threshold == tuner.options.set_threshold
    before = tuner._probabilities(tuner._dataset(world["val"], train=False))
    after = loaded._probabilities(loaded._dataset(world["val"], train=False))
    np.testing.assert_array_equal(before, after)
    assert loaded.evaluate(world["val"]) == tuner.evaluate(world["val"])
    record = world["val"].records[0]
    # predict on the raw image file: the saved extractor runs inside the loaded model
    assert loaded.predict(record.path, record.question, top_k=3) == tuner.predict(record.path, record.question, 3)
    # saving over an existing folder replaces it
    tuner.save(folder)
    assert VQAFineTuner.load(folder).answers.answers == tuner.answers.answers


def test_predict_on_a_raw_image_matches_the_store_features(world, tuned):
    tuner, _ = tuned
    store = world["val"].features
    record = world["val"].records[3]
    from_store = tuner.predict(store[record.image_id], record.question, top_k=5)
    from_file = tuner.predict(record.path, record.question, top_k=5)
    from PIL import Image

    from_pil = tuner.predict(Image.open(record.path), record.question, top_k=5)
    assert len(from_file) == 5 and all(0.0 <= p <= 1.0 for _, p in from_file)
    assert [p for _, p in from_file] == sorted((p for _, p in from_file), reverse=True)
    assert from_file[0][0] == from_store[0][0] and from_pil == from_file
    # the store keeps float16 features; the raw path extracts float32 ones
    np.testing.assert_allclose([p for _, p in from_file], [dict(from_store).get(a, -1) for a, _ in from_file],
                               atol=2e-2)
    with pytest.raises(ValueError):
        tuner.predict(record.path, "   ")


def test_from_pretrained_sources(world, tmp_path):
    from vlptm.objectives import PretrainingModel
    from vlptm.train.checkpoint import save_checkpoint

    encoder = create_model("dual-tiny", region_feat_dim=world["feature_dim"])
    run = tmp_path / "run"
    save_checkpoint(run, 5, PretrainingModel(encoder, tasks=["itc"]), {"step": 5},
                    "data:\n  tokenizer: minilm-l6\n  max_regions: 9\n")
    from_run = VQAFineTuner.from_pretrained(run, answers=["yes", "no"])
    assert type(from_run.encoder).__name__ == "DualStreamEncoder" and from_run.options.max_regions == 9
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(from_run.encoder.state_dict()[name], tensor)
    encoder.save_pretrained(tmp_path / "encoder")
    from_folder = VQAFineTuner.from_pretrained(tmp_path / "encoder", answers=3, hidden_dropout_prob=0.0)
    assert from_folder.encoder.config.hidden_dropout_prob == 0.0 and from_folder.model is None
    with pytest.raises(KeyError):
        VQAFineTuner.from_pretrained("no-such-variant-or-folder")
    with pytest.raises(FileNotFoundError):
        VQAFineTuner.from_pretrained(tmp_path)  # an empty folder


def test_dual_stream_fit_steps_and_question_only_mode(world):
    train = VQAExamples(world["train"].records[:40], world["train"].features)
    tuner = VQAFineTuner.from_pretrained("dual-tiny", answers=20, region_feat_dim=world["feature_dim"])
    history = tuner.fit(train, max_steps=3, batch_size=8, device="cpu", log_every=1)
    assert [h["step"] for h in history] == [1, 2, 3] and len(tuner.answers) <= 20
    # a question-only model never reads the store: missing features cannot matter
    blind = VQAFineTuner.from_pretrained("single-tiny", answers=20, options=VQAOptions(use_regions=False),
                                         region_feat_dim=7)
    blind.fit(VQAExamples(train.records, {}), max_steps=2, batch_size=8, device="cpu")
    assert blind.evaluate(VQAExamples(world["val"].records, {}))["n"] == len(world["val"])


def test_bad_inputs_are_reported(world):
    tuner = VQAFineTuner.from_pretrained("single-tiny", answers=["yes", "no"], region_feat_dim=5)
    with pytest.raises(ValueError, match="region_feat_dim"):
        tuner.evaluate(world["val"])  # 1280-d features, a 5-d encoder
    records = list(world["val"].records[:4])
    ghost = QuestionRecord("x", "not-in-store", Path("."), "is there a cube?", ["no"], {"no": 1}, multi_label=True)
    right = VQAFineTuner.from_pretrained("single-tiny", answers=["yes", "no"], region_feat_dim=world["feature_dim"])
    metrics = right.evaluate(VQAExamples(records + [ghost], world["val"].features))
    assert metrics["n"] == 4 and metrics["missing_images"] == 1
    with pytest.raises(RuntimeError):
        VQAFineTuner.from_pretrained("single-tiny", region_feat_dim=5).predict(None, "what?")
    with pytest.raises(TypeError):
        right.evaluate(records)


# -- pieces ------------------------------------------------------------------------------------------------
def test_head_layout_and_loss():
    head = VQAHead(hidden_size=8, num_answers=5)
    assert [type(m).__name__ for m in head.children()] == ["Linear", "LayerNorm", "Linear"]
    assert (head.dense.in_features, head.dense.out_features, head.out.out_features) == (8, 16, 5)
    pooled = torch.randn(3, 8)
    expected = head.out(torch.nn.functional.layer_norm(torch.nn.functional.gelu(head.dense(pooled)), (16,),
                                                        head.norm.weight, head.norm.bias, head.norm.eps))
    torch.testing.assert_close(head(pooled), expected)
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.tensor([[0.3, 1.0], [0.0, 0.6]])
    by_hand = -(targets * torch.log(torch.sigmoid(logits)) + (1 - targets) * torch.log(1 - torch.sigmoid(logits)))
    torch.testing.assert_close(vqa_loss(logits, targets)["vqa"], by_hand.sum() / 2)


@pytest.mark.parametrize("variant, pos_dim", [("single-tiny", 7), ("dual-tiny", 4)])
def test_model_gradients_on_both_encoders(variant, pos_dim):
    torch.manual_seed(0)
    encoder = create_model(variant, region_feat_dim=6)
    model = VQAModel(encoder, VQAHead(encoder.hidden_size, 4))
    batch = {"input_ids": torch.randint(1000, 2000, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long),
             "region_feats": torch.randn(2, 3, 6), "region_pos": torch.rand(2, 3, pos_dim),
             "region_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}
    logits = model(batch)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    vqa_loss(logits, torch.rand(2, 4))["vqa"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # MLM-only parameters aside, everything on the path to the pooled state learns
    assert not [n for n in unused if "pooler" in n or n.startswith("head.")], unused
    text_only = VQAModel(encoder, model.head, use_regions=False)
    changed = dict(batch, region_feats=torch.randn(2, 3, 6))
    torch.testing.assert_close(text_only.eval()(batch), text_only(changed))


@pytest.mark.parametrize("variant", ["single-tiny", "dual-tiny"])
def test_mean_pooling_reads_the_real_states_only(variant):
    torch.manual_seed(0)
    encoder = create_model(variant, region_feat_dim=6).eval()
    model = VQAModel(encoder, VQAHead(encoder.hidden_size, 4), pooling="mean").eval()
    batch = {"input_ids": torch.randint(1000, 2000, (2, 5)),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
             "region_feats": torch.randn(2, 3, 6), "region_pos": torch.rand(2, 3, encoder.config.region_pos_dim),
             "region_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}
    out = encoder(batch)
    text = out.text_hidden * batch["attention_mask"][..., None]
    regions = out.region_hidden * batch["region_mask"][..., None]
    by_hand = (text.sum(1) + regions.sum(1)) / torch.tensor([[7.0], [6.0]])  # (B, H): 5+2 and 3+3 real states
    torch.testing.assert_close(model(batch), model.head(by_hand))
    # what sits in padded positions cannot change the answer
    noisy = dict(batch, region_feats=batch["region_feats"].clone())
    noisy["region_feats"][0, 2] = 100.0
    torch.testing.assert_close(model(batch), model(noisy))
    with pytest.raises(ValueError, match="pooling"):
        VQAModel(encoder, model.head, pooling="max")


def test_collate_pads_and_scatters_targets():
    items = [
        {"input_ids": np.array([101, 7, 102]), "labels": np.array([2]), "scores": np.array([0.9], np.float32),
         "index": 0, "region_feats": np.ones((2, 4), np.float32), "region_pos": np.ones((2, 7), np.float32)},
        {"input_ids": np.array([101, 102]), "labels": np.array([0, 1]), "scores": np.array([1.0, 0.3], np.float32),
         "index": 1, "region_feats": np.ones((3, 4), np.float32), "region_pos": np.ones((3, 7), np.float32)},
    ]
    batch = collate_vqa(items, num_answers=3)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["region_feats"].shape == (2, 3, 4) and batch["region_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    torch.testing.assert_close(batch["targets"], torch.tensor([[0.0, 0.0, 0.9], [1.0, 0.3, 0.0]]))


def test_split_by_image_is_disjoint_and_seeded():
    records = [QuestionRecord(str(i), f"img{i % 10}", Path("."), "q?", ["a"], {"a": 1}) for i in range(50)]
    rest, held = split_by_image(records, 0.3, seed=1)
    assert len(rest) + len(held) == 50 and len({r.image_id for r in held}) == 3
    assert not {r.image_id for r in held} & {r.image_id for r in rest}
    assert [r.question_id for r in split_by_image(records, 0.3, seed=1)[1]] == [r.question_id for r in held]
    with pytest.raises(ValueError):
        split_by_image(records, 1.0)


# -- the command line --------------------------------------------------------------------------------------
def test_finetune_vqa_command(world, tmp_path, capsys):
    from vlptm.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "init: single-tiny\n"
        f"train: {{questions: {world['root'] / 'world' / 'vqa.json'}, features: {world['root'] / 'store'}}}\n"
        "val_fraction: 0.2\n"
        "answers: {top_k: 30}\n"
        "optim: {epochs: 1, batch_size: 32, device: cpu}\n"
        f"out: {tmp_path / 'out'}\n"
    )
    assert main(["finetune-vqa", "--config", str(recipe), "--optim.max_steps=4", "--optim.lr=1e-3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert printed["val"] == metrics["val"]["accuracy"] and "val_question_lookup_baseline" in printed
    assert metrics["answers"] <= 30
    tuner = VQAFineTuner.load(tmp_path / "out" / "model")
    assert len(tuner.answers) == metrics["answers"]
    # the extractor saved with the model is the one behind the features (the store's 64-px grid config)
    assert tuner._require_extractor().config.min_size == FEATURE_SIDE
    record = world["val"].records[0]
    from_store = dict(tuner.predict(world["val"].features[record.image_id], record.question, len(tuner.answers)))
    for answer, probability in tuner.predict(record.path, record.question, 5):
        assert abs(probability - from_store[answer]) < 2e-2  # float16 store vs float32 extraction
    assert main(["finetune-vqa", "--config", str(recipe), "--optim.no_such_key=1"]) == 2


def test_vqa_demo_answers_questions_about_an_image(world, tuned, tmp_path, capsys):
    import importlib.util

    tuner, _ = tuned
    folder = tuner.save(tmp_path / "demo-model")
    script = Path(__file__).resolve().parents[1] / "demos" / "vqa_demo.py"
    spec = importlib.util.spec_from_file_location("vqa_demo", script)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    record = world["val"].records[0]
    assert demo.main(["--model", str(folder), "--image", str(record.path), "--top-k", "2", record.question]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"Q: {record.question}" and len(lines) == 4
    assert lines[2].split(maxsplit=1)[1] == tuner.predict(record.path, record.question, 1)[0][0]
    assert demo.main(["--model", str(folder), "--image", str(tmp_path / "missing.jpg"), "what?"]) == 2


def test_annotator_count_questions_score_the_official_accuracy(world):
    import dataclasses

    from vlptm.tasks import vqa_accuracy

    def ten_annotators(record):  # 7 annotators give the gold answer, 3 say "blue"
        answers = [record.answers[0]] * 7 + ["blue"] * 3
        counts = {record.answers[0]: 7, "blue": 3} if record.answers[0] != "blue" else {"blue": 10}
        return dataclasses.replace(record, answers=answers, answer_counts=counts, multi_label=False)

    train = VQAExamples([ten_annotators(r) for r in world["train"].records[:64]], world["train"].features)
    test = VQAExamples([ten_annotators(r) for r in world["val"].records[:20]], world["val"].features)
    tuner = VQAFineTuner.from_pretrained("single-tiny", answers=["Yes", "no", "blue", "2"],
                                         region_feat_dim=world["feature_dim"])
    assert tuner.answers.answers == ["yes", "no", "blue", "2"]
    tuner.fit(train, max_steps=2, batch_size=16, device="cpu")
    metrics = tuner.evaluate(test)
    tops = [tuner.predict(test.features[r.image_id], r.question, top_k=1)[0][0] for r in test.records]
    expected = np.mean([vqa_accuracy(top, r.answers) for top, r in zip(tops, test.records)])
    assert metrics["vqa_accuracy"] == pytest.approx(expected) == pytest.approx(metrics["accuracy"])
    assert "exact_set" not in metrics and metrics["n"] == 20


def test_vqa_v2_files_load_and_evaluate(tmp_path):
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "what color is the cat?", "question_id": 10},
        {"image_id": 1, "question": "how many cats?", "question_id": 11},
        {"image_id": 2, "question": "is it raining?", "question_id": 20}]}
    annotations = {"annotations": [
        {"question_id": 10, "question_type": "what color is the", "answer_type": "other",
         "answers": [{"answer": a} for a in ["black"] * 6 + ["gray"] * 4]},
        {"question_id": 11, "question_type": "how many", "answer_type": "number",
         "answers": [{"answer": a} for a in ["2"] * 2 + ["two"] * 2 + ["3"] * 6]},
        {"question_id": 20, "question_type": "is it", "answer_type": "yes/no",
         "answers": [{"answer": "no"}] * 10}]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    generator = torch.Generator().manual_seed(0)
    with FeatureStoreWriter(tmp_path / "store", feature_dim=6, extractor_name="test", extractor_config_hash="t",
                            writer_name="main") as writer:
        for image_id in ("1", "2"):
            boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 15.0]])
            writer.add(image_id, RegionFeatures(boxes, torch.randn(2, 6, generator=generator), torch.ones(2), (20, 30)))
    data = VQAExamples.load(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", tmp_path / "store")
    assert [r.multi_label for r in data.records] == [False] * 3 and len(data.records[1].answers) == 10
    tuner = VQAFineTuner.from_pretrained("single-tiny", answers=["no", "black", "3", "2"], region_feat_dim=6)
    tuner.fit(data, max_steps=1, batch_size=3, device="cpu")
    metrics = tuner.evaluate(data)
    assert metrics["n"] == 3 and set(metrics["by_answer_type"]) == {"other", "number", "yes/no"}
    assert metrics["by_question_type"]["how many"]["n"] == 1
    # "2"/"two" together are 4 of 10 annotators: full credit; "3" (6 of 10): full credit
    top = tuner.predict(data.features["1"], "how many cats?", top_k=1)[0][0]
    expected = {"2": 1.0, "3": 1.0}.get(top, 0.0)
    assert metrics["by_question_type"]["how many"]["accuracy"] == pytest.approx(expected)
