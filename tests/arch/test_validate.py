"""Bad configs: one line naming the field and what to do."""
from __future__ import annotations

import pytest

from sizewise.arch.families import SUPPORTED_MODEL_TYPES, inventory_from_config, validate_config
from sizewise.arch.presets import find_preset
from sizewise.errors import SizewiseError

GOOD = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def _err(cfg) -> str:
    with pytest.raises(SizewiseError) as e:
        validate_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_good_config_and_every_preset_validate():
    validate_config(GOOD)
    for name in ("deepseek-v3", "deepseek-v2-lite", "mixtral-8x7b-v0.1", "qwen2.5-7b"):
        validate_config(find_preset(name).config())


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads"])
def test_missing_field_is_named(field):
    cfg = dict(GOOD)
    del cfg[field]
    msg = _err(cfg)
    assert f"'{field}'" in msg and "missing" in msg


@pytest.mark.parametrize("value", [0, -8])
def test_zero_or_negative_size(value):
    msg = _err(dict(GOOD, hidden_size=value))
    assert "'hidden_size'" in msg and str(value) in msg


@pytest.mark.parametrize("value", ["4096", 64.5, True, [64]])
def test_non_integer_size(value):
    assert "'hidden_size' must be an integer" in _err(dict(GOOD, hidden_size=value))


def test_integral_float_is_accepted():
    assert inventory_from_config(dict(GOOD, hidden_size=64.0)).arch.hidden_size == 64


def test_unsupported_model_type_lists_supported_and_inspect():
    msg = _err(dict(GOOD, model_type="gpt2"))
    assert "'gpt2'" in msg and "sizewise inspect" in msg
    assert all(t in msg for t in SUPPORTED_MODEL_TYPES)


def test_missing_model_type():
    assert "'model_type'" in _err({k: v for k, v in GOOD.items() if k != "model_type"})


def test_not_a_dict():
    assert "JSON object" in _err([1, 2])


def test_kv_heads_must_divide_heads():
    assert "'num_key_value_heads'" in _err(dict(GOOD, num_key_value_heads=3))


def test_top_k_above_expert_count():
    cfg = dict(GOOD, model_type="mixtral", num_local_experts=4, num_experts_per_tok=5)
    assert "'num_experts_per_tok'" in _err(cfg)


def test_mla_fields_required_for_deepseek_v3():
    cfg = find_preset("deepseek-v3").config()
    del cfg["kv_lora_rank"]
    assert "'kv_lora_rank'" in _err(cfg)


def test_head_dim_needed_when_hidden_not_divisible():
    assert "'head_dim'" in _err(dict(GOOD, num_attention_heads=6, num_key_value_heads=6))


def test_bad_mlp_only_layers():
    cfg = dict(GOOD, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
               mlp_only_layers="0,1")
    assert "'mlp_only_layers'" in _err(cfg)
