"""Recipe names, files and validation."""
from __future__ import annotations

import json

import pytest

from sizewise.compression.recipes import (RECIPES, Int4WeightOnlyConfig, Int8StaticConfig, get_recipe,
                                          recipe_from_file)
from sizewise.errors import SizewiseError

NAMES = ["fp32", "fp16", "bf16", "torch-dynamic", "int8-wo", "int8-dyn", "int8-static", "int4-g32", "int4-g64",
         "int4-g128", "int4-gptq-g64", "int4-gptq-g128"]


def test_all_issue_recipes_exist():
    assert set(NAMES) <= set(RECIPES)
    assert RECIPES["int4-gptq-g128"] == Int4WeightOnlyConfig(group_size=128, method="gptq", grid="act-mse")
    assert RECIPES["int4-ct-g64"].zero == "int" and RECIPES["int4-ct-g64"].grid == "minmax"
    assert RECIPES["int4-imatrix-g64"].needs_calibration and RECIPES["int4-imatrix-g64"].method == "rtn"
    assert RECIPES["int4-gptq-g64"].needs_calibration and not RECIPES["int4-g64"].needs_calibration


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(SizewiseError) as e:
        get_recipe("int3")
    for n in NAMES:
        assert n in str(e.value)


def test_recipe_files_json_and_yaml(tmp_path):
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"base": "int4-gptq-g128", "act_order": True, "exclude": "lm_head|mlp.down_proj"}))
    c = recipe_from_file(j)
    assert isinstance(c, Int4WeightOnlyConfig) and c.act_order and c.group_size == 128 and c.method == "gptq"
    assert c.exclude == "lm_head|mlp.down_proj"
    y = tmp_path / "r.yaml"
    y.write_text("kind: int8-static\nstrategy: channel\ncalib_samples: 4\n")
    c = get_recipe(str(y))
    assert c == Int8StaticConfig(strategy="channel", calib_samples=4)


@pytest.mark.parametrize("body", [
    {"base": "int4-g64", "group_sise": 32},  # typo'd field
    {"base": "int5"},
    {"kind": "int4", "method": "awq"},
    {"kind": "int8-static", "strategy": "token"},
    {"kind": "int4", "group_size": 30},
    {"group_size": 64},  # no base/kind
    {"base": "int8-wo", "include": "("},  # bad regex
    {"base": "int4-g64", "zero": "fp8"},
    {"base": "int4-g64", "grid": "hqq"},
    {"base": "int4-g64", "zero": "int", "grid": "mse"},  # an integer zero point takes min/max only
])
def test_bad_recipe_files_are_user_errors(tmp_path, body):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(body))
    with pytest.raises(SizewiseError):
        recipe_from_file(p)


def test_unparseable_recipe_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("base: [unclosed\n")
    with pytest.raises(SizewiseError, match="cannot parse"):
        recipe_from_file(p)
