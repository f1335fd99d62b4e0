"""vlptm.coercion: one set of rules for every config, and the exceptions each config front-end raises."""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import pytest

from vlptm.coercion import (FieldTypeError, UnknownFieldError, build_dataclass, coerce, coerce_fields, field_types,
                            unwrap_optional)


@dataclass
class Inner:
    size: int = 1
    name: str = "a"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    items: List[Inner] = field(default_factory=list)
    limit: Optional[int] = None
    ratios: Tuple[float, ...] = (1.0,)


@pytest.mark.parametrize("tp, value, expected", [
    (Any, "256", "256"),
    (Any, [1, "x"], [1, "x"]),
    (bool, True, True),
    (bool, "TRUE", True),
    (bool, "off", False),
    (bool, "0", False),
    (int, 256, 256),
    (int, "256", 256),
    (int, "-3", -3),
    (int, np.int64(7), 7),
    (float, 0.5, 0.5),
    (float, 2, 2.0),
    (float, "5e-4", 5e-4),
    (float, "0", 0.0),
    (str, "minilm-l6", "minilm-l6"),
    (str, "", ""),
    (Optional[int], None, None),
    (Optional[int], "none", None),
    (Optional[int], "NULL", None),
    (Optional[int], "36", 36),
    (Optional[str], "None", None),
    (Union[int, str], "7", 7),
    (Union[int, str], "seven", "seven"),
    (List[int], [1, "2"], [1, 2]),
    (List[int], (1, 2), [1, 2]),
    (List[str], "[a, b]", ["a", "b"]),
    (List[int], "[]", []),
    (List, [1, "x"], [1, "x"]),
    (Tuple[int, ...], [32, 64], (32, 64)),
    (Tuple[float, ...], "[0.5, 1, 2]", (0.5, 1.0, 2.0)),
    (Tuple[int, str], [1, "a"], (1, "a")),
    (Dict[str, float], {"mlm": 1, "itm": "0.5"}, {"mlm": 1.0, "itm": 0.5}),
    (Dict[str, float], "{mlm: 1}", {"mlm": 1.0}),
    (Dict[str, Any], {"num_layers": "3"}, {"num_layers": "3"}),
    (Inner, {"size": "3"}, Inner(size=3)),
    (Inner, Inner(size=5), Inner(size=5)),
    (Optional[Inner], None, None),
    (Optional[Inner], {"name": "b"}, Inner(name="b")),
])
def test_accepted_values(tp, value, expected):
    result = coerce(tp, value, "key")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("tp, value, expected", [
    (bool, 1, "expected bool"),  # an int is not a bool
    (bool, "maybe", "expected bool"),
    (bool, None, "expected bool"),
    (int, True, "expected int"),  # a bool is not an int
    (int, 32.5, "expected int"),
    (int, 3.0, "expected int"),  # no silent float -> int, even when whole
    (int, "3.0", "expected int"),
    (int, "wide", "expected int"),
    (int, None, "expected int"),
    (float, False, "expected float"),
    (float, "fast", "expected float"),
    (float, [1.0], "expected float"),
    (str, 5, "expected str"),  # quote numbers meant as strings
    (str, None, "expected str"),
    (str, ["a"], "expected str"),
    (Optional[int], "many", "expected int, got 'many' (or none)"),
    (Union[int, float], "x", "expected Union[int, float]"),
    (int, "none", "expected int"),  # "none" only where None is allowed
    (List[int], 3, "expected List[int]"),
    (List[int], "abc", "expected List[int]"),
    (List[int], "[1, ", "not valid YAML"),
    (List[int], [1, "x"], "key[1]: expected int"),
    (Tuple[int, ...], {"a": 1}, "expected Tuple[int, ...]"),
    (Tuple[int, str], [1], "2 items"),
    (Dict[str, float], [1.0], "expected Dict[str, float]"),
    (Dict[str, float], {"mlm": "high"}, "key.mlm: expected float"),
    (Dict[str, float], {1: 1.0}, "key.1: expected str"),
    (Inner, "{size: 3}", "expected a mapping of Inner fields"),  # sections are set key by key
    (Inner, Outer(), "expected a mapping of Inner fields"),  # another dataclass is not an Inner
    (Inner, {"size": "big"}, "key.size: expected int"),
    (set, {1}, "unsupported field type set"),
])
def test_rejected_values_name_the_key_and_the_type(tp, value, expected):
    with pytest.raises(FieldTypeError, match=re.escape(expected)) as info:
        coerce(tp, value, "key")
    assert str(info.value).startswith("key")
    assert isinstance(info.value, TypeError)


def test_nested_dataclasses_and_unknown_keys():
    outer = build_dataclass(Outer, {"inner": {"size": "4"}, "items": "[{size: 2}, {name: z}]", "limit": "none",
                                    "ratios": [1, 2]})
    assert outer == Outer(inner=Inner(size=4), items=[Inner(size=2), Inner(name="z")], ratios=(1.0, 2.0))
    assert build_dataclass(Outer, {}) == Outer()  # missing fields keep their defaults
    message = "unknown key(s) ['sise'] in items[1]; valid keys: ['name', 'size']"
    with pytest.raises(UnknownFieldError, match=re.escape(message)):
        build_dataclass(Outer, {"items": [{"size": 1}, {"sise": 2}]})
    with pytest.raises(KeyError, match=r"unknown override\(s\) \['x'\] in Inner"):
        coerce_fields(Inner, {"size": 1, "x": 2}, noun="override")
    with pytest.raises(FieldTypeError, match=r"cfg\.inner\.size: expected int, got 'big'"):
        build_dataclass(Outer, {"inner": {"size": "big"}}, "cfg")
    assert str(UnknownFieldError("unknown key")) == "unknown key"  # not KeyError's quoted repr


def test_field_types_and_unwrap_optional():
    types_by_name = field_types(Outer)
    assert list(types_by_name) == ["inner", "items", "limit", "ratios"]
    assert types_by_name["items"] == List[Inner] and types_by_name["limit"] == Optional[int]
    assert unwrap_optional(Optional[Dict[str, float]]) == Dict[str, float]
    assert unwrap_optional(Union[int, str]) == Union[int, str]
    assert unwrap_optional(int) is int


# ------------------------------------------------------------------------- the three front-ends
def test_recipe_front_end_raises_config_error():
    from vlptm.config import ConfigError, build_config, from_dict
    from vlptm.train.config import PretrainConfig

    cfg = build_config(PretrainConfig, {"optim": {"lr": "5e-4"}},
                       ["--data.max_regions=24", "--deterministic=yes", "--init_from=none", "--optim.betas=[0.9, 0.99]",
                        "--data.sources=[{captions: a.json, features: f, repeat: 2}]"])
    assert (cfg.optim.lr, cfg.data.max_regions, cfg.deterministic, cfg.init_from) == (5e-4, 24, True, None)
    assert cfg.optim.betas == [0.9, 0.99] and cfg.data.sources[0].repeat == 2
    for bad in (["--optim.lr=fast"], ["--seed=1.5"], ["--data.sources=[{captions: a, featurez: b}]"],
                ["--optim.betas=[0.9, "], ["--optim.nope=1"]):
        with pytest.raises(ConfigError):
            build_config(PretrainConfig, {}, bad)
    with pytest.raises(ConfigError, match="seed: expected int, got True"):
        from_dict(PretrainConfig, {"seed": True})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\] in optim"):
        from_dict(PretrainConfig, {"optim": {"lrr": 1.0}})


def test_encoder_front_end_raises_key_and_type_errors():
    from vlptm.models.config import SingleStreamConfig, apply_overrides, get_model_config, parse_overrides

    assert parse_overrides(["--hidden_dropout_prob=5e-2", "--gradient_checkpointing=on"], SingleStreamConfig) == {
        "hidden_dropout_prob": 0.05, "gradient_checkpointing": True}
    config = get_model_config("single-tiny", num_layers="3", layer_norm_eps=1e-6)
    assert (config.num_layers, config.layer_norm_eps) == (3, 1e-6)
    with pytest.raises(KeyError, match="unknown override"):
        apply_overrides(config, {"num_cross_layers": 2})
    with pytest.raises(TypeError, match="num_layers: expected int, got True"):
        apply_overrides(config, {"num_layers": True})
    with pytest.raises(TypeError, match="text_init: expected str"):
        apply_overrides(config, {"text_init": 3})
    with pytest.raises(KeyError):
        parse_overrides(["--hidden=3"], SingleStreamConfig)


def test_extractor_front_end_raises_key_and_type_errors():
    from vlptm.detection.config import ExtractorConfig, SelectionConfig, apply_overrides, config_from_dict

    config = ExtractorConfig(class_names=["__background__", "cat"])
    new = apply_overrides(config, {"selection.fixed_boxes": "36", "rpn.anchor_sizes": "[16, 32]",
                                   "backbone.frozen_bn": "false", "image_mean": [0, 1, 0.5]})
    assert new.selection.fixed_boxes == 36 and new.selection.count_range == (36, 36)
    assert apply_overrides(config, {"selection": {"max_boxes": 50}}).selection == SelectionConfig(max_boxes=50)
    assert new.rpn.anchor_sizes == (16, 32) and new.backbone.frozen_bn is False and new.image_mean == (0.0, 1.0, 0.5)
    assert apply_overrides(new, {"selection.fixed_boxes": "none"}).selection.fixed_boxes is None
    with pytest.raises(KeyError):
        apply_overrides(config, {"selection.no_such_key": 1})
    with pytest.raises(KeyError):
        apply_overrides(config, {"min_size.x": 1})  # not a section
    with pytest.raises(TypeError, match="selection.max_boxes: expected int, got 'many'"):
        apply_overrides(config, {"selection.max_boxes": "many"})
    with pytest.raises(TypeError, match="expected a mapping of SelectionConfig fields"):
        apply_overrides(config, {"selection": "{fixed_boxes: 36}"})
    with pytest.raises(TypeError, match=r"ExtractorConfig\.class_names\[1\]: expected str"):
        config_from_dict(ExtractorConfig, {"class_names": ["__background__", 3]})
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['fixed'\] in ExtractorConfig\.selection"):
        config_from_dict(ExtractorConfig, {"selection": {"fixed": 36}})
