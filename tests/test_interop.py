"""Checkpoint interoperability: transformers' LXMERT / VisualBERT and UNITER's released key names.

transformers' models are built from tiny random configs, their weights perturbed (so LayerNorms are not
identity), saved as state dicts and loaded into vlptm's encoders; hidden states, pooled outputs and
attention maps must match within 1e-4 in eval mode.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlptm.models import (DualStreamEncoder, SingleStreamEncoder, create_model, infer_lxmert_config,
                          infer_uniter_config, infer_visualbert_config, load_lxmert, load_uniter, load_visualbert)

transformers = pytest.importorskip("transformers")

H, HEADS, INTER, FEAT, B, T, R = 32, 4, 64, 48, 3, 7, 6
ATOL = 1e-4


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _inputs(pos_dim: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, 4:] = 0
    region_mask = torch.ones(B, R, dtype=torch.long)
    region_mask[2, 3:] = 0
    return dict(
        input_ids=torch.randint(1, 99, (B, T), generator=gen) * attention_mask,
        attention_mask=attention_mask,
        token_type_ids=torch.zeros(B, T, dtype=torch.long),
        region_feats=torch.randn(B, R, FEAT, generator=gen),
        region_pos=torch.rand(B, R, pos_dim, generator=gen),
        region_mask=region_mask,
    )


def _close(actual, expected, mask=None):
    if mask is not None:
        actual, expected = actual[mask.bool()], expected[mask.bool()]
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# LXMERT -> dual stream
# ---------------------------------------------------------------------------------------------------------
def _lxmert_config():
    return transformers.LxmertConfig(vocab_size=100, hidden_size=H, num_attention_heads=HEADS, intermediate_size=INTER,
                                     l_layers=2, r_layers=2, x_layers=2, visual_feat_dim=FEAT, visual_pos_dim=4,
                                     max_position_embeddings=32, num_qa_labels=5, num_object_labels=7,
                                     num_attr_labels=3)


def _lxmert_reference():
    torch.manual_seed(0)
    pretraining = _perturb(transformers.LxmertForPreTraining(_lxmert_config()))
    return pretraining


def _check_against_lxmert(hf_model, encoder):
    x = _inputs()
    with torch.no_grad():
        ref = hf_model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"],
                       visual_feats=x["region_feats"], visual_pos=x["region_pos"],
                       visual_attention_mask=x["region_mask"], output_attentions=True)
        out = encoder(x, output_attentions=True)
        fast = encoder(x)
    _close(out.text_hidden, ref.language_output, x["attention_mask"])
    _close(out.region_hidden, ref.vision_output, x["region_mask"])
    _close(out.pooled, ref.pooled_output)
    _close(fast.text_hidden, ref.language_output, x["attention_mask"])
    _close(fast.region_hidden, ref.vision_output, x["region_mask"])
    _close(fast.pooled, ref.pooled_output)
    assert len(out.cross_attentions) == len(ref.cross_encoder_attentions) == 2
    for ours, theirs in zip(out.cross_attentions, ref.cross_encoder_attentions, strict=True):
        _close(ours.transpose(1, 2), theirs.transpose(1, 2), x["attention_mask"])  # real words' rows


@pytest.mark.parametrize("layout", ["LxmertModel", "LxmertForPreTraining", "original module.bert.", "original bert.",
                                    "fine-tuned lxrt_encoder.model.bert."])
def test_lxmert_state_dicts_load_into_dual_stream_and_match(layout):
    pretraining = _lxmert_reference()
    state = pretraining.state_dict()
    if layout == "LxmertModel":
        state = pretraining.lxmert.state_dict()
    elif layout.startswith("original"):
        prefix = "module." if "module" in layout else ""
        state = {(f"{prefix}bert.{k[len('lxmert.'):]}" if k.startswith("lxmert.") else f"{prefix}{k}"): v
                 for k, v in state.items()}
    elif layout.startswith("fine-tuned"):  # the original release's VQA/GQA/NLVR2 wrappers
        state = {(f"lxrt_encoder.model.bert.{k[len('lxmert.'):]}" if k.startswith("lxmert.") else
                  f"logit_fc.{k}"): v for k, v in state.items()}
    config = infer_lxmert_config(state, num_attention_heads=HEADS)
    assert (config.num_text_layers, config.num_region_layers, config.num_cross_layers) == (2, 2, 2)
    assert (config.region_feat_dim, config.region_pos_dim, config.vocab_size) == (FEAT, 4, 100)
    encoder = DualStreamEncoder(config).eval()
    report = load_lxmert(encoder, state, strict=True)
    assert report.complete and report.missing == [] and report.unexpected == []
    assert set(report.defaulted) == {"region_embeddings.mask_embedding"}
    if layout != "LxmertModel":
        assert report.ignored and all(".cls." in f".{k}" or "head" in k for k in report.ignored)
    _check_against_lxmert(pretraining.lxmert, encoder)


def test_lxmert_from_files(tmp_path):
    from safetensors.torch import save_file

    pretraining = _lxmert_reference()
    state = {k: v.contiguous() for k, v in pretraining.lxmert.state_dict().items()}
    save_file(state, str(tmp_path / "lxmert.safetensors"))
    torch.save({f"module.bert.{k}": v for k, v in state.items()}, tmp_path / "model_LXRT.pth")
    for path in (tmp_path / "lxmert.safetensors", tmp_path / "model_LXRT.pth"):
        encoder = DualStreamEncoder(infer_lxmert_config(path, num_attention_heads=HEADS)).eval()
        assert load_lxmert(encoder, path).complete
        _check_against_lxmert(pretraining.lxmert, encoder)


def test_lxmert_report_names_missing_unexpected_and_shape_errors():
    state = dict(_lxmert_reference().lxmert.state_dict())
    encoder = DualStreamEncoder(infer_lxmert_config(state, num_attention_heads=HEADS))
    del state["encoder.x_layers.1.lang_output.dense.weight"]
    state["encoder.x_layers.0.lang_extra.weight"] = torch.zeros(3)
    report = load_lxmert(encoder, state)
    assert report.missing == ["cross_layers.1.text_ffn.fc2.weight"]
    assert report.unexpected == ["encoder.x_layers.0.lang_extra.weight"]
    text = str(report)
    assert "missing" in text and "cross_layers.1.text_ffn.fc2.weight" in text and "lang_extra" in text
    with pytest.raises(KeyError):
        load_lxmert(encoder, state, strict=True)
    wrong = create_model("dual-tiny", num_text_layers=2, num_region_layers=2, num_cross_layers=2, hidden_size=64)
    with pytest.raises(ValueError, match="shape"):
        load_lxmert(wrong, _lxmert_reference().lxmert.state_dict())
    with pytest.raises(TypeError):
        load_lxmert(create_model("single-tiny"), state)


# ---------------------------------------------------------------------------------------------------------
# VisualBERT -> single stream
# ---------------------------------------------------------------------------------------------------------
def _visualbert(cls_name="VisualBertModel"):
    torch.manual_seed(0)
    config = transformers.VisualBertConfig(vocab_size=100, hidden_size=H, num_attention_heads=HEADS,
                                           intermediate_size=INTER, num_hidden_layers=3, visual_embedding_dim=FEAT,
                                           max_position_embeddings=32)
    return _perturb(getattr(transformers, cls_name)(config))


@pytest.mark.parametrize("cls_name", ["VisualBertModel", "VisualBertForPreTraining"])
def test_visualbert_state_dict_loads_into_single_stream_and_matches(cls_name):
    model = _visualbert(cls_name)
    reference = model if cls_name == "VisualBertModel" else model.visual_bert
    state = model.state_dict()
    config = infer_visualbert_config(state, num_attention_heads=HEADS)
    assert (config.region_embedding, config.region_pos_dim, config.num_layers) == ("visualbert", 0, 3)
    encoder = SingleStreamEncoder(config).eval()
    report = load_visualbert(encoder, state, strict=True)
    assert report.complete
    x = _inputs()
    del x["region_pos"]  # VisualBERT has no box positions
    with torch.no_grad():
        ref = reference(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                        token_type_ids=x["token_type_ids"], visual_embeds=x["region_feats"],
                        visual_attention_mask=x["region_mask"], output_attentions=True)
        out = encoder(x, output_attentions=True)
        fast = encoder(x)
    for o in (out, fast):
        _close(o.text_hidden, ref.last_hidden_state[:, :T], x["attention_mask"])
        _close(o.region_hidden, ref.last_hidden_state[:, T:], x["region_mask"])
        _close(o.pooled, ref.pooler_output)
    for ours, theirs in zip(out.cross_attentions, ref.attentions, strict=True):
        _close(ours.transpose(1, 2), theirs[:, :, :T, T:].transpose(1, 2), x["attention_mask"])  # real words' rows


def test_visualbert_needs_a_visualbert_style_encoder():
    state = _visualbert().state_dict()
    with pytest.raises(ValueError, match="visualbert"):
        load_visualbert(create_model("single-tiny"), state)


# ---------------------------------------------------------------------------------------------------------
# UNITER key names -> single stream
# ---------------------------------------------------------------------------------------------------------
def _uniter_fixture(num_layers=2, seed=0):
    """A state dict with the key names and shapes of UNITER's released checkpoints (random values)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    def norm(prefix):
        return {f"{prefix}.weight": 1 + rnd(H), f"{prefix}.bias": rnd(H)}

    def linear(prefix, out_dim, in_dim):
        return {f"{prefix}.weight": rnd(out_dim, in_dim), f"{prefix}.bias": rnd(out_dim)}

    s = {"uniter.embeddings.word_embeddings.weight": rnd(100, H),
         "uniter.embeddings.position_embeddings.weight": rnd(32, H),
         "uniter.embeddings.token_type_embeddings.weight": rnd(2, H)}
    s.update(norm("uniter.embeddings.LayerNorm"))
    img = "uniter.img_embeddings"
    s.update(linear(f"{img}.img_linear", H, FEAT))
    s.update(norm(f"{img}.img_layer_norm"))
    s.update(linear(f"{img}.pos_linear", H, 7))
    s.update(norm(f"{img}.pos_layer_norm"))
    s[f"{img}.mask_embedding.weight"] = torch.cat([torch.zeros(1, FEAT), rnd(1, FEAT)])  # padding_idx=0
    s.update(norm(f"{img}.LayerNorm"))
    for i in range(num_layers):
        p = f"uniter.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            s.update(linear(f"{p}.attention.self.{name}", H, H))
        s.update(linear(f"{p}.attention.output.dense", H, H))
        s.update(norm(f"{p}.attention.output.LayerNorm"))
        s.update(linear(f"{p}.intermediate.dense", INTER, H))
        s.update(linear(f"{p}.output.dense", H, INTER))
        s.update(norm(f"{p}.output.LayerNorm"))
    s.update(linear("uniter.pooler.dense", H, H))
    # task heads of the released fine-tuned / pretraining checkpoints live outside ``uniter.``
    s.update(linear("itm_output", 2, H))
    s.update(linear("feat_regress.net.0", H, H))
    s["cls.predictions.bias"] = rnd(100)
    return s


def _uniter_reference(state, x, masked):
    """UNITER's forward composed by hand for the embeddings, transformers' BERT encoder for the layers."""
    g = lambda k: state[f"uniter.{k}"]  # noqa: E731
    ln = lambda v, k: F.layer_norm(v, (H,), g(f"{k}.weight"), g(f"{k}.bias"), eps=1e-12)  # noqa: E731
    ids = x["input_ids"]
    text = ln(g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:T]
              + g("embeddings.token_type_embeddings.weight")[x["token_type_ids"]], "embeddings.LayerNorm")
    # UNITER: masked regions' features are zeroed, then mask_embedding(img_masks) is added
    feats = x["region_feats"].masked_fill(masked[..., None], 0.0)
    feats = feats + g("img_embeddings.mask_embedding.weight")[masked.long()]
    transformed_im = ln(F.linear(feats, g("img_embeddings.img_linear.weight"), g("img_embeddings.img_linear.bias")),
                        "img_embeddings.img_layer_norm")
    transformed_pos = ln(F.linear(x["region_pos"], g("img_embeddings.pos_linear.weight"),
                                  g("img_embeddings.pos_linear.bias")), "img_embeddings.pos_layer_norm")
    type_embedding = g("embeddings.token_type_embeddings.weight")[1]
    image = ln(transformed_im + transformed_pos + type_embedding, "img_embeddings.LayerNorm")
    hidden = torch.cat([text, image], dim=1)  # (B, T+R, H)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=H, num_attention_heads=HEADS, intermediate_size=INTER, num_hidden_layers=2,
        max_position_embeddings=32, attn_implementation="eager")).eval()
    bert_state = {k[len("uniter."):]: v for k, v in state.items()
                  if k.startswith(("uniter.encoder.", "uniter.pooler.", "uniter.embeddings."))}
    missing, unexpected = bert.load_state_dict(bert_state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    mask = torch.cat([x["attention_mask"], x["region_mask"]], dim=1).float()
    extended = (1.0 - mask)[:, None, None, :] * -10000.0  # UNITER's additive mask
    sequence = bert.encoder(hidden, attention_mask=extended)[0]
    return sequence, bert.pooler(sequence)


def test_uniter_keys_load_into_single_stream_and_match_hand_composed_reference():
    state = _uniter_fixture()
    config = infer_uniter_config(state, num_attention_heads=HEADS)
    assert (config.region_embedding, config.region_pos_dim, config.region_feat_dim) == ("uniter", 7, FEAT)
    encoder = SingleStreamEncoder(config).eval()
    report = load_uniter(encoder, state, strict=True)
    assert report.complete and report.defaulted == {}
    assert sorted(report.ignored) == sorted(k for k in state if not k.startswith("uniter."))
    assert len(report.loaded) == len(encoder.state_dict())  # every encoder tensor came from the checkpoint
    x = _inputs(pos_dim=7)
    masked = torch.zeros(B, R, dtype=torch.bool)
    masked[0, 1] = masked[2, 0] = True
    with torch.no_grad():
        sequence, pooled = _uniter_reference(state, x, masked)
        out = encoder(x, region_masked=masked)
    _close(out.text_hidden, sequence[:, :T], x["attention_mask"])
    _close(out.region_hidden, sequence[:, T:], x["region_mask"])
    _close(out.pooled, pooled)


def test_uniter_tf_style_layer_norm_names_and_module_prefix():
    state = _uniter_fixture()
    renamed = {}
    for key, value in state.items():
        if "LayerNorm" in key or "layer_norm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[f"module.{key}"] = value
    encoder = SingleStreamEncoder(infer_uniter_config(renamed, num_attention_heads=HEADS))
    assert load_uniter(encoder, renamed, strict=True).complete
    reference = SingleStreamEncoder(infer_uniter_config(state, num_attention_heads=HEADS))
    load_uniter(reference, state)
    for (name, a), (_, b) in zip(encoder.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_uniter_missing_keys_are_reported():
    state = _uniter_fixture()
    del state["uniter.img_embeddings.mask_embedding.weight"]
    encoder = SingleStreamEncoder(infer_uniter_config(state, num_attention_heads=HEADS))
    report = load_uniter(encoder, state)
    assert report.missing == ["region_embeddings.mask_embedding"] and not report.complete
    with pytest.raises(KeyError, match="mask_embedding"):
        report.raise_if_incomplete()
