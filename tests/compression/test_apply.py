"""compress(model, config) on tiny llamas: which modules change, fallbacks, and model quality."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from comp_helpers import tiny_llama, tokens
from sizewise.compression import packed as P
from sizewise.compression.apply import compress
from sizewise.compression.precision import RefinedLMHead, StreamEmbedding
from sizewise.compression.recipes import RECIPES, Int4WeightOnlyConfig

DECODER_LINEARS = 2 * 7  # q k v o gate up down per layer


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0, hidden=256, inter=512)


@pytest.mark.parametrize("name,cls", [("int8-wo", P.Int8WeightOnlyLinear), ("int8-dyn", P.Int8DynamicLinear),
                                      ("int8-static", P.Int8StaticLinear), ("int4-g64", P.Int4FloatZeroLinear),
                                      ("int4-gptq-g128", P.Int4FloatZeroLinear), ("int4-ct-g64", P.Int4WeightOnlyLinear),
                                      ("int4-imatrix-g64", P.Int4FloatZeroLinear)])
def test_targets_decoder_linears_only_and_stays_close(base, name, cls):
    m = copy.deepcopy(base)
    ids = tokens(2, 48)
    with torch.no_grad():
        ref = base(ids).logits
    compress(m, RECIPES[name], calib_tokens=tokens(4, 48, seed=7))
    packed = {n: mod for n, mod in m.named_modules() if isinstance(mod, P.PackedLinear)}
    assert len(packed) == DECODER_LINEARS and all(type(mod) is cls for mod in packed.values())
    assert all(".layers." in n for n in packed)
    assert isinstance(m.lm_head, nn.Linear) and isinstance(m.model.embed_tokens, nn.Embedding)  # not quantized
    if getattr(RECIPES[name], "stream", "bf16") == "fp32":  # stored bf16, computed around the kernels in fp32
        assert type(m.lm_head) is RefinedLMHead and type(m.model.embed_tokens) is StreamEmbedding
        assert m.lm_head.weight is m.model.embed_tokens.weight and m.lm_head.weight.dtype == torch.bfloat16
        assert m.model.norm.weight.dtype == torch.float32
    else:
        assert type(m.lm_head) is nn.Linear and type(m.model.embed_tokens) is nn.Embedding
    rec = m.sizewise_compression
    assert set(rec.modules) == set(packed) and rec.recipe_name == name
    with torch.no_grad():
        out = m(ids).logits
    rel = (out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()
    assert rel < (0.05 if name.startswith("int8") else 0.3)
    if RECIPES[name].needs_calibration:
        assert rec.calibration["tokens"] == 4 * 48


def test_group_size_fallback_is_recorded():
    m = tiny_llama(hidden=192, inter=512)  # 192 is not a multiple of 128; 512 is
    compress(m, RECIPES["int4-g128"])
    rec = m.sizewise_compression
    fb = rec.fallbacks
    assert fb and all(v == {"requested": 128, "used": 64, "reason": "input dim 192 is not a multiple of 128"}
                      for v in fb.values())
    # every Linear reading the 192-wide hidden state fell back; down_proj (input 512) did not
    assert set(fb) == {f"model.layers.{i}.{p}" for i in range(2) for p in
                       ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj")}
    assert m.model.layers[0].mlp.down_proj.group_size == 128
    assert m.model.layers[0].self_attn.q_proj.group_size == 64


def test_layers_the_kernel_cannot_take_are_kept_and_listed():
    m = tiny_llama(hidden=192, inter=520)  # gate/up output 520 is not a multiple of 16
    compress(m, Int4WeightOnlyConfig(group_size=64, fallback_group_sizes=()))
    rec = m.sizewise_compression
    gate_up = {f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")}
    down = {f"model.layers.{i}.mlp.down_proj" for i in range(2)}  # input 520 is not a multiple of 64
    assert set(rec.kept) == gate_up | down
    assert all("multiple of 16" in rec.kept[n] for n in gate_up)
    assert all("group size 64" in rec.kept[n] for n in down)
    assert type(m.model.layers[0].mlp.up_proj) is nn.Linear


def test_include_exclude_patterns():
    m = tiny_llama()
    compress(m, Int4WeightOnlyConfig(group_size=64, exclude=r"lm_head|embed|norm|down_proj"))
    assert type(m.model.layers[0].mlp.down_proj) is nn.Linear
    assert isinstance(m.model.layers[0].mlp.up_proj, P.Int4WeightOnlyLinear)


def test_calibrated_recipes_need_tokens():
    with pytest.raises(ValueError):
        compress(tiny_llama(), RECIPES["int8-static"])


def test_dtype_recipe_casts_weights_keeps_rotary_fp32():
    m = compress(tiny_llama(), RECIPES["bf16"])
    assert m.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32


def test_torch_dynamic_baseline_runs():
    m = compress(tiny_llama(), RECIPES["torch-dynamic"])
    with torch.no_grad():
        assert torch.isfinite(m(tokens(1, 16)).logits).all()
    assert all(v["scheme"] == "torch-dynamic-qint8" for v in m.sizewise_compression.modules.values())
