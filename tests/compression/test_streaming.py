"""Streaming compress of a sharded bf16 checkpoint == in-memory compress of the same weights."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tokens
from sizewise.compression.apply import compress
from sizewise.compression.checkpoint import load_compressed, read_tensors, save_compressed
from sizewise.compression.recipes import RECIPES
from sizewise.compression.streaming import compress_checkpoint_streaming
from sizewise.errors import SizewiseError


def assert_same_tensors(d1, d2) -> None:
    """Two checkpoint directories hold the same tensor names, dtypes and bytes."""
    a, b = read_tensors(d1), read_tensors(d2)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["int4-g128", "int4-ct-g64", "int8-dyn-nosq", "fp16"])
def test_streaming_equals_in_memory(tiny_hf_dir, tmp_path, name):
    assert len(list(tiny_hf_dir.glob("*.safetensors"))) > 1  # really sharded
    man = compress_checkpoint_streaming(tiny_hf_dir, tmp_path / "s", RECIPES[name], shard_bytes=150_000)
    m = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype="auto")
    assert m.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    compress(m, RECIPES[name])
    man2 = save_compressed(m, None, tmp_path / "m", None, tiny_hf_dir)
    assert_same_tensors(tmp_path / "s", tmp_path / "m")
    assert man["tensors"] == man2["tensors"] and man["modules"] == man2["modules"]
    assert man["fallbacks"] == man2["fallbacks"]
    assert man["parent"]["sha256"] == man2["parent"]["sha256"]
    assert len(man["files"]) > 1  # output sharded with an index
    m2, tok, _ = load_compressed(tmp_path / "s")
    ids = tokens(1, 24)
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, m(ids).logits)
    assert tok is not None  # tokenizer files were copied


def test_streaming_refuses_calibrated_recipes(tiny_hf_dir, tmp_path):
    with pytest.raises(SizewiseError, match="cannot be streamed"):
        compress_checkpoint_streaming(tiny_hf_dir, tmp_path / "o", RECIPES["int8-static"])
    assert not (tmp_path / "o").exists()


def test_streaming_truncated_shard_is_a_user_error(tiny_hf_dir, tmp_path):
    shard = sorted(tiny_hf_dir.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(SizewiseError, match="truncated|corrupt"):
        compress_checkpoint_streaming(tiny_hf_dir, tmp_path / "o", RECIPES["int4-g64"])
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temp dir left behind


@pytest.mark.parametrize("name", ["int4-gptq-g64", "int4-imatrix-g64", "int8-dyn", "int8-gptq"])
def test_sequential_streaming_layer_by_layer_equals_in_memory(tiny_hf_dir, tmp_path, name):
    """GPTQ and SmoothQuant + W8A8 calibrate layer by layer: streamed from disk == in memory, byte for byte."""
    calib = tokens(3, 32, seed=11)
    cfg = RECIPES[name]
    man = compress_checkpoint_streaming(tiny_hf_dir, tmp_path / "s", cfg, calib_tokens=calib)
    m = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype="auto")
    compress(m, cfg, calib_tokens=calib)
    man2 = save_compressed(m, None, tmp_path / "m", None, tiny_hf_dir)
    assert_same_tensors(tmp_path / "s", tmp_path / "m")
    assert man["modules"] == man2["modules"] and man["calibration"] == man2["calibration"]
    with pytest.raises(SizewiseError, match="calibration"):
        compress_checkpoint_streaming(tiny_hf_dir, tmp_path / "x", cfg)
