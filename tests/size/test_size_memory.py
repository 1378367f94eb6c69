"""KV cache (GQA, MLA latent and naive), inference totals, input checks."""
from __future__ import annotations

from dataclasses import replace

import pytest

from sizewise.errors import SizewiseError
from sizewise.size.formats import size_in_format
from sizewise.size.memory import (RUNTIME_FIXED_BYTES, inference_memory, kv_cache_bytes,
                                  kv_values_per_token_layer)
from size_helpers import dense_arch, dense_inventory


def test_gqa_kv_cache_by_hand():
    a = dense_arch(layers=32, hidden=4096, heads=32, kv_heads=8)
    # 2 (K and V) * 8 heads * 128 dims * 2 bytes * 32 layers per token
    per_token = 2 * 8 * 128 * 2 * 32
    assert kv_cache_bytes(a, 8192, 2, "bf16") == per_token * 8192 * 2
    assert kv_cache_bytes(a, 8192, 2, "fp32") == 2 * kv_cache_bytes(a, 8192, 2, "fp16")
    assert kv_cache_bytes(a, 8192, 2, "fp8") == per_token * 8192 * 2 // 2
    assert kv_cache_bytes(a, 8192, 2, "int4") * 2 == kv_cache_bytes(a, 8192, 2, "int8")


def test_sliding_window_caps_kv():
    a = replace(dense_arch(layers=4), sliding_window=1024)
    assert kv_cache_bytes(a, 4096, 1) == kv_cache_bytes(a, 1024, 1)


def mla_arch():
    # DeepSeek-V3's attention fields, typed from its config.json
    return replace(dense_arch(layers=61, hidden=7168, heads=128, kv_heads=128), attention="mla",
                   head_dim=192, v_head_dim=128, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                   q_lora_rank=1536)


def test_mla_latent_576_values():
    a = mla_arch()
    assert kv_values_per_token_layer(a, latent=True) == 576
    assert kv_values_per_token_layer(a, latent=False) == 128 * (128 + 64 + 128)
    assert kv_cache_bytes(a, 4096, 3, "bf16") == 576 * 2 * 61 * 4096 * 3
    assert kv_cache_bytes(a, 4096, 3, "bf16", latent=False) == 128 * 320 * 2 * 61 * 4096 * 3


def test_inference_parts_add_up():
    inv = dense_inventory(layers=4, hidden=512, heads=8, kv_heads=2, vocab=2000, inter=1024)
    m = inference_memory(inv, "int4-g128", context=2048, batch=4, kv_dtype="fp8")
    assert m.weights == size_in_format(inv, "int4-g128").bytes
    assert m.kv_cache == kv_cache_bytes(inv.arch, 2048, 4, "fp8")
    assert m.kv_cache_naive is None
    assert m.total_bytes == m.weights + m.kv_cache + m.activations + m.overhead
    assert m.overhead >= RUNTIME_FIXED_BYTES
    assert m.activations > 0
    # more batch -> more KV and no fewer activations
    m2 = inference_memory(inv, "int4-g128", context=2048, batch=8, kv_dtype="fp8")
    assert m2.kv_cache == 2 * m.kv_cache and m2.activations >= m.activations


@pytest.mark.parametrize("kw", [dict(context=0), dict(batch=-1), dict(kv_dtype="fp4"), dict(weights_fmt="int2")])
def test_bad_inputs(kw):
    inv = dense_inventory(layers=1, hidden=256, heads=4, kv_heads=2)
    with pytest.raises(SizewiseError):
        inference_memory(inv, **kw)
