"""Every family's analytic inventory equals the transformers model built from the same config.

Small configs with random-looking dims exercise each switch (biases, tied head, GQA, head_dim,
dense/MoE layer selection); tensor names and shapes are matched against the real state dict.
"""
from __future__ import annotations

import pytest

from sizewise.arch.families import SUPPORTED_MODEL_TYPES, inventory_from_config, match_tensor

BASE = dict(vocab_size=1000, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)

CASES = {
    "llama": dict(BASE, model_type="llama"),
    "llama-tied-bias-mha": dict(BASE, model_type="llama", tie_word_embeddings=True, attention_bias=True,
                                mlp_bias=True, num_key_value_heads=6),
    "llama-head_dim": dict(BASE, model_type="llama", head_dim=24),
    "mistral": dict(BASE, model_type="mistral", sliding_window=128),
    "mixtral": dict(BASE, model_type="mixtral", num_local_experts=5, num_experts_per_tok=2),
    "qwen2": dict(BASE, model_type="qwen2"),
    "qwen2-tied": dict(BASE, model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(BASE, model_type="qwen3", head_dim=32, tie_word_embeddings=True),
    "qwen3-bias": dict(BASE, model_type="qwen3", head_dim=16, attention_bias=True),
    "qwen3_moe": dict(BASE, model_type="qwen3_moe", num_hidden_layers=5, head_dim=16, num_experts=6,
                      num_experts_per_tok=2, moe_intermediate_size=40, decoder_sparse_step=2, mlp_only_layers=[3]),
    "deepseek_v2": dict(BASE, model_type="deepseek_v2", num_key_value_heads=6, q_lora_rank=None, kv_lora_rank=32,
                        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
                        n_shared_experts=2, num_experts_per_tok=3, moe_intermediate_size=24,
                        first_k_dense_replace=1, moe_layer_freq=1, topk_method="greedy"),
    "deepseek_v2-qlora": dict(BASE, model_type="deepseek_v2", num_key_value_heads=6, q_lora_rank=48,
                              kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                              n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                              moe_intermediate_size=24, first_k_dense_replace=2, moe_layer_freq=1),
    "deepseek_v3": dict(BASE, model_type="deepseek_v3", num_key_value_heads=6, q_lora_rank=48, kv_lora_rank=32,
                        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
                        n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=24, n_group=2,
                        topk_group=1, first_k_dense_replace=1, moe_layer_freq=1, num_nextn_predict_layers=0),
}


def test_every_supported_family_has_a_case():
    covered = {c["model_type"] for c in CASES.values()}
    # "deepseek" (DeepSeek-MoE, remote code only) is checked by hand in test_deepseek.py
    assert set(SUPPORTED_MODEL_TYPES) - covered == {"deepseek"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_total_and_groups_match_transformers(case, meta_counts):
    cfg = CASES[case]
    inv = inventory_from_config(cfg, case)
    total, groups, _ = meta_counts(cfg)
    assert inv.total == total
    ours = {g: c.total for g, c in inv.groups().items()}
    assert ours == groups


@pytest.mark.parametrize("case", sorted(CASES))
def test_names_and_shapes_match_state_dict(case, meta_counts):
    """Every non-expert tensor transformers stores is named and shaped as our template says.

    transformers 5 fuses routed experts into 3-D tensors (`experts.gate_up_proj`); checkpoints keep
    per-expert names, which is what our templates use, so expert tensors are compared by count above.
    """
    cfg = CASES[case]
    inv = inventory_from_config(cfg, case)
    _, _, shapes = meta_counts(cfg)
    checked = 0
    for name, shape in shapes.items():
        if ".experts." in name or (name == "lm_head.weight" and cfg.get("tie_word_embeddings")):
            continue  # a tied head is an alias of embed_tokens, not stored again
        if cfg["model_type"] == "mixtral":  # transformers 5 renames block_sparse_moe -> mlp on load
            name = name.replace(".mlp.", ".block_sparse_moe.")
        spec = match_tensor(inv, name)
        assert spec is not None, name
        assert spec.shape == shape, name
        checked += 1
    assert checked > 10


def test_moe_layer_selection_qwen3_moe():
    inv = inventory_from_config(CASES["qwen3_moe"])
    # layers 0..4, step 2 -> sparse where (i+1) % 2 == 0: 1, 3; 3 is in mlp_only_layers -> only layer 1
    assert inv.arch.num_moe_layers == 1
    assert inv.arch.num_experts == 6 and inv.arch.experts_per_token == 2


def test_activated_counts_top_k_experts_only():
    cfg = CASES["mixtral"]
    inv = inventory_from_config(cfg)
    expert = 3 * 96 * 200  # w1, w2, w3 of one expert
    assert inv.total - inv.activated == 3 * (5 - 2) * expert  # 3 layers, 3 idle experts each


def test_arch_info_dense():
    inv = inventory_from_config(CASES["llama-head_dim"])
    a = inv.arch
    assert (a.num_layers, a.hidden_size, a.num_attention_heads, a.num_kv_heads, a.head_dim) == (3, 96, 6, 2, 24)
    assert a.attention == "gqa" and not inv.is_moe
    assert inventory_from_config(CASES["llama-tied-bias-mha"]).arch.attention == "mha"
    assert inventory_from_config(CASES["mistral"]).arch.sliding_window == 128


def test_tied_head_is_counted_once():
    untied = inventory_from_config(CASES["qwen2"])
    tied = inventory_from_config(CASES["qwen2-tied"])
    assert untied.total - tied.total == 1000 * 96
    assert "lm_head" not in tied.groups()
