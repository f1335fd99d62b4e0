"""Objectives: masking statistics, each loss falls on a fixed tiny batch (both encoders), task routing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlptm.models import create_model
from vlptm.objectives import (IGNORE_INDEX, PretrainingModel, mask_regions, mask_text, sample_hard_negatives,
                              sample_span_lengths)
from vlptm.objectives.masking import span_length_probs

MASK_ID, VOCAB = 103, 30522


def _text(rng, length=200, continuation_prob=0.3):
    """A long [CLS] ... [SEP] text whose tokens are continuations (##) with some probability."""
    ids = rng.integers(1000, 30000, size=length)
    ids[0], ids[-1] = 101, 102
    maskable = np.ones(length, bool)
    maskable[[0, -1]] = False
    word_start = rng.random(length) > continuation_prob
    word_start[1] = True
    return ids, maskable, word_start


def _groups(word_start, maskable):
    words, current = [], []
    for pos in np.flatnonzero(maskable):
        if word_start[pos] and current:
            words.append(current)
            current = []
        current.append(pos)
    return words + [current]


@pytest.mark.parametrize("scheme", ["token", "whole_word", "span"])
def test_text_masking_statistics(scheme):
    rng = np.random.default_rng(0)
    selected = total = masked = kept = 0
    for _ in range(300):
        ids, maskable, word_start = _text(rng)
        out, labels = mask_text(ids, maskable, word_start, rng, mask_id=MASK_ID, vocab_size=VOCAB, scheme=scheme)
        target = labels != IGNORE_INDEX
        assert not target[~maskable].any(), "special tokens are never targets"
        assert np.array_equal(labels[target], ids[target])
        assert np.array_equal(out[~target], ids[~target]), "non-targets are untouched"
        selected += target.sum()
        total += maskable.sum()
        masked += (out[target] == MASK_ID).sum()
        kept += (out[target] == ids[target]).sum()
        if scheme != "token":  # whole words only
            for word in _groups(word_start, maskable):
                assert target[word].all() or not target[word].any()
    assert selected / total == pytest.approx(0.15, abs=0.01)
    if scheme != "span":  # per-token 80/10/10; spans decide per span (noisier), checked loosely
        assert masked / selected == pytest.approx(0.8, abs=0.02)
        assert kept / selected == pytest.approx(0.1, abs=0.02)
    else:
        assert masked / selected == pytest.approx(0.8, abs=0.06)


def test_span_lengths_follow_spanbert():
    lengths = sample_span_lengths(np.random.default_rng(0), 200_000)
    assert lengths.min() == 1 and lengths.max() == 10
    assert lengths.mean() == pytest.approx(3.8, abs=0.03)
    freq = np.bincount(lengths, minlength=11)[1:] / len(lengths)
    assert np.allclose(freq, span_length_probs(), atol=0.005)
    assert freq[0] / freq[1] == pytest.approx(1 / 0.8, rel=0.05)  # geometric ratio


def test_span_masking_masks_contiguous_spans():
    rng = np.random.default_rng(1)
    ids, maskable, word_start = _text(rng, 400, continuation_prob=0.0)
    run_lengths = []
    for _ in range(200):
        _, labels = mask_text(ids, maskable, word_start, rng, mask_id=MASK_ID, vocab_size=VOCAB, scheme="span")
        target = np.concatenate([[False], labels != IGNORE_INDEX, [False]]).astype(int)
        starts, stops = np.flatnonzero(np.diff(target) == 1), np.flatnonzero(np.diff(target) == -1)
        run_lengths.extend(stops - starts)
    assert np.mean(run_lengths) > 3.0  # token masking would give ~1.2


def test_short_text_always_gets_a_target():
    rng = np.random.default_rng(2)
    ids = np.array([101, 2417, 102])
    for scheme in ("token", "whole_word", "span"):
        for _ in range(50):
            _, labels = mask_text(ids, np.array([False, True, False]), np.ones(3, bool), rng, mask_id=MASK_ID,
                                  vocab_size=VOCAB, scheme=scheme)
            assert labels.tolist() == [IGNORE_INDEX, 2417, IGNORE_INDEX]


def test_region_masking_statistics():
    rng = np.random.default_rng(3)
    picks = [mask_regions(36, rng) for _ in range(2000)]
    assert all(p.any() for p in picks)
    assert np.mean(picks) == pytest.approx(0.15 + 0.85 ** 36 / 36, abs=0.01)
    assert mask_regions(0, rng).shape == (0,)


def test_hard_negatives_avoid_positives_and_prefer_similar():
    torch.manual_seed(0)
    sim = torch.eye(4) * 10
    sim[0, 2] = 9.0  # text 0 looks like image 2
    ids = torch.tensor([0, 1, 2, 1])  # pairs 1 and 3 share an image
    counts = torch.zeros(4)
    for _ in range(200):
        image_for_text, text_for_image = sample_hard_negatives(sim, ids)
        assert (ids[image_for_text] != ids).all() and (ids[text_for_image] != ids).all()
        counts[image_for_text[0]] += 1
    assert counts[2] > 190
    with pytest.raises(ValueError):
        sample_hard_negatives(torch.zeros(2, 2), torch.tensor([5, 5]))


def test_hard_negatives_skip_images_whose_caption_is_the_same_text():
    torch.manual_seed(0)
    model = PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["itm", "itc"],
                             itm_negatives="hard")
    batch = _fixed_batch(7)
    batch["input_ids"][1] = batch["input_ids"][0]  # images 0 and 1 carry the same caption
    seen = _spy_encoder_inputs(model)
    negatives = set()
    for _ in range(30):
        model(batch, ["itm"])
        text_ids, feats = seen[-1]["input_ids"], seen[-1]["region_feats"]  # (3B, T), (3B, R, D): pos, hard, hard
        for row in range(B, 3 * B):  # which image each negative pair of text 0's caption got
            if torch.equal(text_ids[row], batch["input_ids"][0]):
                negatives.add(next(j for j in range(B) if torch.equal(feats[row], batch["region_feats"][j])))
    assert negatives and not negatives & {0, 1}  # text 0/1 never meets image 0 or 1 as a "negative"


# -- losses fall on a fixed tiny batch -------------------------------------------------------------------
D, C, B, T, R = 12, 5, 8, 7, 5


def _fixed_batch(pos_dim: int) -> dict:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 1100, (B, T), generator=g)
    input_ids[:, 0], input_ids[:, -1] = 101, 102
    mlm_labels = torch.full((B, T), IGNORE_INDEX)
    mlm_labels[:, 2] = input_ids[:, 2]
    mlm_input_ids = input_ids.clone()
    mlm_input_ids[:, 2] = MASK_ID
    feats = torch.randn(B, R, D, generator=g)
    region_masked = torch.zeros(B, R, dtype=torch.bool)
    region_masked[:, 1] = True
    probs = torch.softmax(3 * torch.randn(B, R, C, generator=g), -1)
    itm_labels = torch.tensor([1, 0] * (B // 2))
    itm_feats = torch.where(itm_labels[:, None, None].bool(), feats, feats.roll(1, 0))
    pos = torch.rand(B, R, pos_dim, generator=g)
    return {
        "input_ids": input_ids, "attention_mask": torch.ones(B, T, dtype=torch.long),
        "token_type_ids": torch.zeros(B, T, dtype=torch.long), "mlm_input_ids": mlm_input_ids,
        "mlm_labels": mlm_labels, "region_feats": feats, "region_pos": pos,
        "region_mask": torch.ones(B, R, dtype=torch.long), "region_masked": region_masked,
        "region_cls_probs": probs, "masked_modality": torch.arange(B) % 2, "image_index": torch.arange(B),
        "itm_input_ids": input_ids, "itm_attention_mask": torch.ones(B, T, dtype=torch.long),
        "itm_token_type_ids": torch.zeros(B, T, dtype=torch.long), "itm_region_feats": itm_feats,
        "itm_region_pos": pos, "itm_region_mask": torch.ones(B, R, dtype=torch.long), "itm_labels": itm_labels,
    }


@pytest.mark.parametrize("model_name", ["single-tiny", "dual-tiny"])
@pytest.mark.parametrize("task,negatives", [("mlm", "random"), ("mrfr", "random"), ("mrc", "random"),
                                            ("mrc_kl", "random"), ("itm", "random"), ("itm", "hard"),
                                            ("itc", "random"), ("itc", "regions")])
def test_each_loss_falls_on_a_fixed_batch(model_name, task, negatives):
    torch.manual_seed(0)
    encoder = create_model(model_name, region_feat_dim=D, vocab_size=1200, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    tasks = [task] + (["itc"] if negatives == "hard" else [])
    pooling = "regions" if negatives == "regions" else "mean"  # ("itc", "regions"): ITC's region pooling
    model = PretrainingModel(encoder, tasks, num_region_classes=C, itm_negatives="random" if pooling == "regions"
                             else negatives, itc_embed_dim=16, itc_pooling=pooling)
    batch = _fixed_batch(encoder.config.region_pos_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        out = model(batch, [task])
        assert torch.isfinite(out[task])
        losses.append(out[task].item())
        optimizer.zero_grad()
        out[task].backward()
        optimizer.step()
    # hard negatives are resampled every step among pairs of random inputs: only check that ITM learns
    # something (the loss falls from its start); the sampling itself is tested above
    factor = 0.9 if negatives == "hard" else 0.7
    assert min(losses[-5:]) < factor * losses[0], losses
    if task == "mrc":
        assert out["mrc_acc"].item() > 0.9


def _spy_encoder_inputs(model):
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    return seen


@pytest.mark.parametrize("masking,expect_text_rows,expect_region_rows", [
    ("conditional", [True, False] * 4, [False, True] * 4),
    ("joint", [True] * 8, [True] * 8),
])
def test_conditional_and_joint_masking(masking, expect_text_rows, expect_region_rows):
    torch.manual_seed(0)
    encoder = create_model("single-tiny", region_feat_dim=D, vocab_size=1200)
    model = PretrainingModel(encoder, ["mlm", "mrfr"], masking=masking)
    batch = _fixed_batch(7)
    seen = _spy_encoder_inputs(model)
    out = model(batch, ["mlm", "mrfr"])
    assert set(out) >= {"mlm", "mrfr"} and len(seen) == 1
    text_rows = (seen[0]["input_ids"] == MASK_ID).any(1)
    region_rows = seen[0]["region_masked"].any(1)
    assert text_rows.tolist() == expect_text_rows and region_rows.tolist() == expect_region_rows
    # one task alone masks its own modality in every example
    seen.clear()
    model(batch, ["mlm"])
    assert (seen[0]["input_ids"] == MASK_ID).any(1).all() and not seen[0]["region_masked"].any()


def test_hard_negative_itm_pass_pairs_each_text_and_image_with_another():
    torch.manual_seed(0)
    model = PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["itm", "itc"],
                             itm_negatives="hard")
    batch = _fixed_batch(7)
    seen = _spy_encoder_inputs(model)
    out = model(batch, ["itm"])
    joint = [s for s in seen if "input_ids" in s and "region_feats" in s]
    assert len(joint) == 1 and set(out) == {"itm", "itm_acc"}
    ids, feats = joint[0]["input_ids"], joint[0]["region_feats"]  # (3B, T), (3B, R, D)
    assert ids.shape[0] == 3 * B
    text_row = lambda t: next(i for i in range(B) if torch.equal(t, batch["input_ids"][i]))  # noqa: E731
    image_row = lambda f: next(i for i in range(B) if torch.equal(f, batch["region_feats"][i]))  # noqa: E731
    for k in range(3 * B):
        t, i = text_row(ids[k]), image_row(feats[k])
        assert (t == i) == (k < B)  # positives first, then one hard image per text, one hard text per image
        if B <= k < 2 * B:
            assert t == k - B
        if k >= 2 * B:
            assert i == k - 2 * B


def test_hard_negative_itm_falls_back_to_random_negatives_on_a_one_image_batch():
    torch.manual_seed(0)
    model = PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["itm", "itc"],
                             itm_negatives="hard")
    batch = dict(_fixed_batch(7))
    batch["image_index"] = torch.zeros(B, dtype=torch.long)  # every caption of one image
    seen = _spy_encoder_inputs(model)
    out = model(batch, ["itm"])
    joint = [s for s in seen if "input_ids" in s and "region_feats" in s]
    assert len(joint) == 1 and joint[0]["input_ids"].shape[0] == B  # the data's (random) ITM pairs, not 3B
    assert torch.equal(joint[0]["input_ids"], batch["itm_input_ids"])
    assert torch.isfinite(out["itm"])


def test_a_call_can_score_the_data_random_itm_pairs_of_a_hard_negative_model():
    torch.manual_seed(0)
    model = PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["itm", "itc"],
                             itm_negatives="hard").eval()
    batch = dict(_fixed_batch(7))
    seen = _spy_encoder_inputs(model)
    out = model(batch, ["itm"], itm_negatives="random")
    assert model.itm_negatives == "hard"  # the model keeps its own setting
    assert len(seen) == 1 and torch.equal(seen[0]["input_ids"], batch["itm_input_ids"])  # no ITC pass, B pairs
    assert torch.isfinite(out["itm"])
    with pytest.raises(ValueError, match="itm_negatives"):
        model(batch, ["itm"], itm_negatives="easy")


def test_itc_ignores_other_captions_of_the_same_image():
    torch.manual_seed(0)
    model = PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["itc"])
    batch = _fixed_batch(7)
    text = model.embed_text(batch)
    image = model.embed_images(batch)
    distinct = model.itc(text, image, torch.arange(B))["itc"]
    shared = model.itc(text, image, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))["itc"]
    assert shared < distinct  # fewer negatives in the softmax
    assert text.shape == (B, 256) and torch.allclose(text.norm(dim=-1), torch.ones(B))


@pytest.mark.parametrize("model_name", ["single-tiny", "dual-tiny"])
def test_region_pooled_itc_scores_by_the_best_region_and_ignores_padding(model_name):
    torch.manual_seed(0)
    model = PretrainingModel(create_model(model_name, region_feat_dim=D, vocab_size=1200), ["itc", "itm"],
                             itc_embed_dim=16, itc_pooling="regions", itm_negatives="hard").eval()
    batch = _fixed_batch(model.encoder.config.region_pos_dim)
    batch["region_mask"][:, R - 2:] = 0  # the last two regions of every image are padding
    with torch.no_grad():
        text, image = model.embed_text(batch), model.embed_images(batch)  # (B, 32), (B, R, 32)
        assert text.shape == (B, 32) and image.shape == (B, R, 32)
        assert torch.allclose(image.norm(dim=-1), torch.ones(B, R), atol=1e-5)
        expected = torch.einsum("te,ire->tir", text, image[:, : R - 2]).amax(-1)  # (B, B) over real regions
        assert torch.allclose(model.itc.similarity(text, image), expected, atol=1e-6)
        trimmed = {k: (v[:, : R - 2] if k.startswith("region") else v) for k, v in batch.items()}
        assert torch.allclose(model.itc.similarity(text, model.embed_images(trimmed)), expected, atol=1e-5)
        out = model(batch)  # hard ITM negatives are sampled from the region-pooled similarity
    assert torch.isfinite(out["itc"]) and torch.isfinite(out["itm"])


@pytest.mark.parametrize("model_name", ["single-tiny", "dual-tiny"])
def test_itm_on_the_mean_state_learns_and_ignores_padding(model_name):
    torch.manual_seed(0)
    encoder = create_model(model_name, region_feat_dim=D, vocab_size=1200, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    model = PretrainingModel(encoder, ["itm"], itm_pooling="mean")
    batch = _fixed_batch(encoder.config.region_pos_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        loss = model(batch, ["itm"])["itm"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert min(losses[-5:]) < 0.7 * losses[0], losses
    model.eval()
    pairs = {key: batch[key] for key in ("input_ids", "attention_mask", "region_feats", "region_pos", "region_mask")}
    padded = dict(pairs, input_ids=torch.cat([pairs["input_ids"], torch.zeros(B, 3, dtype=torch.long)], 1),
                  attention_mask=torch.cat([pairs["attention_mask"], torch.zeros(B, 3, dtype=torch.long)], 1))
    with torch.no_grad():
        probs = model.match_probability(pairs)  # (B,)
        out = model.encoder(pairs)
        mean = torch.cat([out.text_hidden, out.region_hidden], 1).mean(1)  # every position is real here
        assert torch.allclose(probs, model.itm.head(mean).softmax(-1)[:, 1], atol=1e-5)
        assert torch.allclose(model.match_probability(padded), probs, atol=1e-5)


def test_mrc_needs_class_probabilities():
    with pytest.raises(ValueError, match="class probabilities"):
        PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["mrc"], num_region_classes=0)
    with pytest.raises(ValueError, match="subset"):
        PretrainingModel(create_model("single-tiny", region_feat_dim=D, vocab_size=1200), ["mlm", "vqa"])
