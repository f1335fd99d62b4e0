"""vlptm.coercion: one set of rules for every config, and the exceptions each config front-end raises."""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import pytest

from vlptm.coercion import (FieldTypeError, UnknownFieldError, build_dataclass, coerce, coerce_fields, field_types,
                            set_dotted, to_dict, unwrap_optional)


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


# ------------------------------------------------------------------------- the dotted-key walker
@dataclass
class Recipe:
    inner: Inner = field(default_factory=Inner)
    outer: Outer = field(default_factory=Outer)
    weights: Dict[str, float] = field(default_factory=lambda: {"mlm": 1.0})
    extra: Dict[str, Any] = field(default_factory=lambda: {"nested": {"depth": 1}})
    spare: Optional[Inner] = None
    seed: int = 0


def test_set_dotted_walks_nested_sections_and_returns_a_copy():
    recipe = Recipe()
    new = set_dotted(recipe, {"seed": "3", "inner.size": "4", "outer.inner.name": "b", "outer.limit": "none",
                              "outer.ratios": "[0.5, 2]"})
    assert new == Recipe(inner=Inner(size=4), outer=Outer(inner=Inner(name="b"), ratios=(0.5, 2.0)), seed=3)
    assert recipe == Recipe()  # the input is left alone
    assert new.weights == recipe.weights and new.weights is not recipe.weights  # no shared mutable value
    # a section given a mapping is rebuilt from it (defaults elsewhere), and a later key may walk into it
    assert set_dotted(Recipe(inner=Inner(size=9)), {"inner": {"name": "c"}}).inner == Inner(name="c")
    assert set_dotted(recipe, {"inner": {"name": "c"}, "inner.size": 5}).inner == Inner(size=5, name="c")
    assert set_dotted(recipe, {"spare": {"size": "2"}}).spare == Inner(size=2)
    assert to_dict(new)["outer"]["inner"] == {"size": 1, "name": "b"}


@pytest.mark.parametrize("key, expected", [
    ("nope.size", "nope.size: 'nope' is not a section of the config"),
    ("seed.x", "seed.x: 'seed' is not a section of the config"),  # a field, but not a section
    ("outer.items.size", "'items' is not a section"),  # a list of sections is not one
    ("spare.size", "'spare' is not a section"),  # an optional section that is None
])
def test_set_dotted_rejects_unknown_sections(key, expected):
    with pytest.raises(UnknownFieldError, match=re.escape(expected)):
        set_dotted(Recipe(), {key: 1})


def test_set_dotted_rejects_unknown_leaves_and_lists_the_valid_keys():
    message = "inner.sise: unknown key 'sise'; valid keys: ['name', 'size']"
    with pytest.raises(UnknownFieldError, match=re.escape(message)):
        set_dotted(Recipe(), {"inner.sise": 1})
    with pytest.raises(UnknownFieldError, match=re.escape("override --sead: unknown key 'sead'")):
        set_dotted(Recipe(), {"sead": 1}, prefix="override --")
    with pytest.raises(UnknownFieldError, match=re.escape("unknown key(s) ['sise'] in inner")):
        set_dotted(Recipe(), {"inner": {"sise": 1}})  # a mapping for a section is checked too


def test_set_dotted_adds_keys_only_inside_free_form_dicts():
    new = set_dotted(Recipe(), {"weights.itm": "1.5", "weights.mlm": 2, "extra.num_layers": "3"})
    assert new.weights == {"mlm": 2.0, "itm": 1.5} and type(new.weights["mlm"]) is float
    assert new.extra == {"nested": {"depth": 1}, "num_layers": "3"}  # Dict[str, Any]: the value as given
    assert set_dotted(Recipe(), {"extra.nested.depth": 2}).extra == {"nested": {"depth": 2}}
    with pytest.raises(UnknownFieldError, match=re.escape("extra.nested.width: unknown key 'width'; valid keys: "
                                                          "['depth']")):
        set_dotted(Recipe(), {"extra.nested.width": 2})  # a mapping inside an untyped value is not free-form
    with pytest.raises(UnknownFieldError, match="unknown key 'new'"):
        set_dotted(Recipe(), {"outer.new": 1})  # a section is not free-form


@pytest.mark.parametrize("key, value, expected", [
    ("inner.size", "big", "inner.size: expected int, got 'big'"),
    ("seed", True, "seed: expected int, got True"),
    ("weights.itm", "high", "weights.itm: expected float, got 'high'"),
    ("weights", "[1, 2]", "weights: expected Dict[str, float]"),
    ("inner", "{size: 3}", "inner: expected a mapping of Inner fields"),
    ("outer.items", "[{size: x}]", "outer.items[0].size: expected int"),
])
def test_set_dotted_type_checks_the_leaf(key, value, expected):
    with pytest.raises(FieldTypeError, match=re.escape(expected)):
        set_dotted(Recipe(), {key: value})


def test_recipe_overrides_raise_config_error_only():
    from vlptm.config import ConfigError, apply_overrides
    from vlptm.train.config import PretrainConfig

    cfg = apply_overrides(PretrainConfig(), ["--tasks.weights.mrc=2", "--model_overrides.num_layers=3"])
    assert cfg.tasks.weights["mrc"] == 2.0 and cfg.model_overrides == {"num_layers": "3"}
    for bad, message in ((["--nope.lr=1"], "override --nope.lr: 'nope' is not a section of the config"),
                         (["--optim.nope=1"], "override --optim.nope: unknown key 'nope'; valid keys: ['accum_steps'"),
                         (["--optim.lr=fast"], "optim.lr: expected float, got 'fast'"),
                         (["--tasks.weights.itm=high"], "tasks.weights.itm: expected float, got 'high'"),
                         (["--optim"], "not of the form --key=value")):
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            apply_overrides(PretrainConfig(), bad)
        assert not isinstance(info.value, (KeyError, TypeError))  # one documented exception type


def test_extractor_overrides_raise_key_and_type_errors():
    from vlptm.config import ConfigError
    from vlptm.detection.config import GridConfig, apply_overrides

    with pytest.raises(KeyError, match="'selection' is not a section") as unknown:
        apply_overrides(GridConfig(), {"selection.fixed_boxes": 36})  # a region-extractor key
    with pytest.raises(KeyError, match="unknown key 'grid'"):
        apply_overrides(GridConfig(), {"grid": 4})
    with pytest.raises(TypeError, match="grid_size: expected int, got 'four'") as ill_typed:
        apply_overrides(GridConfig(), {"grid_size": "four"})
    assert not isinstance(unknown.value, ConfigError) and not isinstance(ill_typed.value, ConfigError)


def test_dict_conversions_are_one_implementation():
    import vlptm.config
    import vlptm.detection.config

    assert vlptm.config.to_dict is to_dict and vlptm.detection.config.config_to_dict is to_dict
    recipe = Recipe(outer=Outer(items=[Inner(size=2)]))
    assert build_dataclass(Recipe, to_dict(recipe)) == recipe


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
