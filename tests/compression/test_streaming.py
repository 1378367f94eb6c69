"""Streaming compress of a sharded bf16 checkpoint == in-memory compress of the same weights."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from comp_helpers import char_tokenizer, tiny_llama, tokens
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


def stream_vs_memory(src, tmp_path, cfg, calib=None):
    """Compress `src` streamed and in memory; the two directories must hold the same bytes."""
    man = compress_checkpoint_streaming(src, tmp_path / "s", cfg, calib_tokens=calib)
    m = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    compress(m, cfg, calib_tokens=calib)
    man2 = save_compressed(m, None, tmp_path / "m", None, src)
    assert_same_tensors(tmp_path / "s", tmp_path / "m")
    return man, man2, m


@pytest.mark.parametrize("name", ["int4-gptq-g64", "int4-imatrix-g64", "int8-dyn", "int8-gptq"])
def test_sequential_streaming_layer_by_layer_equals_in_memory(tiny_hf_dir, tmp_path, name):
    """GPTQ and SmoothQuant + W8A8 calibrate layer by layer: streamed from disk == in memory, byte for byte."""
    calib = tokens(3, 32, seed=11)
    cfg = RECIPES[name]
    man, man2, _ = stream_vs_memory(tiny_hf_dir, tmp_path, cfg, calib)
    assert man["modules"] == man2["modules"] and man["calibration"] == man2["calibration"]
    with pytest.raises(SizewiseError, match="calibration"):
        compress_checkpoint_streaming(tiny_hf_dir, tmp_path / "x", cfg)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("name", ["int4-g64-emb8", "int4-gptq-g64-emb8"])
def test_streaming_int8_token_table_equals_in_memory(tiny_hf_dir, tmp_path, name, tied):
    """The int8 token table streams too: the embedding as int8 rows (row-chunked), a tied head as an
    alias of them, an untied head as int8-wo; byte for byte what the in-memory path writes."""
    src = tiny_hf_dir
    if tied:
        src = tmp_path / "tied"
        tiny_llama(seed=4, tied=True, dtype=torch.bfloat16).save_pretrained(src, max_shard_size="400KB")
        char_tokenizer().save_pretrained(src)
    cfg = RECIPES[name]
    man, man2, m = stream_vs_memory(src, tmp_path, cfg, tokens(3, 32, seed=11) if cfg.needs_calibration else None)
    assert man["tensors"] == man2["tensors"] and man["modules"] == man2["modules"]
    assert man["modules"]["model.embed_tokens"]["scheme"] == "int8-embed"
    assert man["modules"]["lm_head"]["scheme"] == ("int8-wo-tied" if tied else "int8-wo")
    assert man["aliases"] == man2["aliases"]
    assert ("lm_head.weight" in man["aliases"]) == tied
    m2, _, _ = load_compressed(tmp_path / "s")
    ids = tokens(1, 24)
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, m(ids).logits)


def test_streaming_int8_token_table_refuses_a_head_bias(tmp_path):
    from safetensors.torch import save_file
    src = tmp_path / "src"
    m = tiny_llama(seed=5, tied=False, dtype=torch.bfloat16)
    m.save_pretrained(src)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    sd["lm_head.bias"] = torch.zeros(m.config.vocab_size, dtype=torch.bfloat16)
    for f in src.glob("*.safetensors"):
        f.unlink()
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SizewiseError, match="lm_head has a bias"):
        compress_checkpoint_streaming(src, tmp_path / "o", RECIPES["int4-g64-emb8"])
    assert not (tmp_path / "o").exists()
