"""The KV formula against the cache transformers actually allocates (tiny random models, fp32)."""
from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig

from sizewise.size.memory import kv_cache_bytes
from size_helpers import dense_arch


def cache_bytes(cfg, batch: int, tokens: int) -> int:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        out = model(torch.randint(0, cfg.vocab_size, (batch, tokens)), use_cache=True)
    return sum(t.numel() * t.element_size() for layer in out.past_key_values.layers
               for t in (layer.keys, layer.values))


def test_gqa_cache_matches_transformers():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    arch = dense_arch(layers=3, hidden=64, heads=4, kv_heads=2, vocab=128, inter=128)
    assert cache_bytes(cfg, batch=2, tokens=10) == kv_cache_bytes(arch, 10, 2, "fp32")


def test_mla_latent_cache_matches_transformers():
    cfg = DeepseekV3Config(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, vocab_size=128, kv_lora_rank=32,
                           q_lora_rank=48, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                           n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                           first_k_dense_replace=1)
    arch = replace(dense_arch(layers=2, hidden=64, heads=4, kv_heads=4, vocab=128, inter=128), attention="mla",
                   head_dim=24, v_head_dim=16, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16)
    # transformers caches the compressed latent (kv_lora_rank) and the shared rope key per token
    assert cache_bytes(cfg, batch=2, tokens=7) == kv_cache_bytes(arch, 7, 2, "fp32", latent=True)
