"""MODEL argument resolution: preset, repo id, config.json, directory, .gguf / bundled, bad input."""
from __future__ import annotations

import json

import pytest

from sizewise.arch.resolve import inventory_for, load_config
from sizewise.errors import SizewiseError

TINY = dict(model_type="qwen2", vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
# embed + head + final norm; per layer: q,o 16x16, k,v 8x16 (2 kv heads x head_dim 4), q/k/v biases, SwiGLU, 2 norms
TINY_TOTAL = 2 * 50 * 16 + 16 + 2 * (2 * 16 * 16 + 2 * 8 * 16 + (16 + 8 + 8) + 3 * 16 * 24 + 2 * 16)


def test_preset_and_repo_id():
    cfg, name = load_config("deepseek-v2-lite")
    assert cfg["model_type"] == "deepseek_v2" and name == "deepseek-ai/DeepSeek-V2-Lite"
    assert load_config("deepseek-ai/DeepSeek-V2-Lite")[0] == cfg


def test_config_file_and_directory(tmp_path):
    d = tmp_path / "tiny-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    assert load_config(str(d / "config.json")) == (TINY, "tiny-model")
    assert load_config(str(d)) == (TINY, "tiny-model")
    assert inventory_for(str(d)).total == TINY_TOTAL


def test_malformed_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "llama",')
    with pytest.raises(SizewiseError, match="not valid JSON"):
        load_config(str(p))
    p.write_text("[1, 2]")
    with pytest.raises(SizewiseError, match="not an object"):
        load_config(str(p))


def test_missing_file_and_empty_dir(tmp_path):
    with pytest.raises(SizewiseError, match="file not found"):
        load_config(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(SizewiseError, match="no config.json"):
        load_config(str(tmp_path))
    with pytest.raises(SizewiseError, match="GGUF file not found"):
        load_config(str(tmp_path / "missing.gguf"))
    with pytest.raises(SizewiseError, match="no model given"):
        load_config("")


def test_unknown_name_goes_to_preset_suggestions():
    with pytest.raises(SizewiseError, match="did you mean mixtral-8x7b-v0.1"):
        load_config("mixtrl-8x7b-v0.1")


def test_prefix_resolves():
    assert load_config("mixtral-8x7b")[1] == "mistralai/Mixtral-8x7B-v0.1"


def test_bundled_gguf_counts_like_smollm2_preset(bundled_path):
    """The bundled GGUF's header-derived config counts the same as the SmolLM2-135M preset."""
    inv = inventory_for("bundled")
    assert inv.total == inventory_for("smollm2-135m").total == 134_515_008
    assert inv.arch.tie_word_embeddings and inv.arch.num_kv_heads == 3
    assert inventory_for(str(bundled_path)).total == inv.total


def test_binary_file_and_safetensors_index(tmp_path):
    b = tmp_path / "weights.bin"
    b.write_bytes(b"\x80\x81\xff\x00" * 10)
    with pytest.raises(SizewiseError, match="not a JSON text file"):
        load_config(str(b))
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "x.safetensors"}}))
    with pytest.raises(SizewiseError, match="safetensors index"):
        load_config(str(idx))


def test_safetensors_file_uses_config_beside_it(tmp_path):
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(SizewiseError, match="no config.json beside it"):
        load_config(str(st))
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert load_config(str(st))[0] == TINY
