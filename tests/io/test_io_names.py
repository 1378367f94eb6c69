"""Checkpoint name -> inventory group, for HF and GGUF names; GGUF -> HF name mapping."""
from __future__ import annotations

import pytest

from sizewise.io.names import gguf_group, gguf_to_hf_name, hf_group, is_scale, layer_index, template, tensor_group


@pytest.mark.parametrize("name,group", [
    ("model.embed_tokens.weight", "embedding"),
    ("lm_head.weight", "lm_head"),
    ("model.norm.weight", "norms"),
    ("model.layers.3.self_attn.q_proj.weight", "attention"),
    ("model.layers.3.self_attn.q_proj.bias", "attention"),
    ("model.layers.3.self_attn.kv_a_proj_with_mqa.weight", "attention"),
    ("model.layers.3.self_attn.kv_a_layernorm.weight", "norms"),
    ("model.layers.3.input_layernorm.weight", "norms"),
    ("model.layers.3.post_attention_layernorm.weight", "norms"),
    ("model.layers.0.mlp.gate_proj.weight", "mlp"),
    ("model.layers.0.mlp.down_proj.weight", "mlp"),
    ("model.layers.5.mlp.experts.7.down_proj.weight", "routed_experts"),
    ("model.layers.5.mlp.shared_experts.up_proj.weight", "shared_experts"),
    ("model.layers.5.mlp.shared_expert.up_proj.weight", "shared_experts"),
    ("model.layers.5.mlp.gate.weight", "router"),
    ("model.layers.5.mlp.gate.e_score_correction_bias", "router"),
    ("model.layers.5.block_sparse_moe.gate.weight", "router"),
    ("model.layers.5.block_sparse_moe.experts.3.w1.weight", "routed_experts"),
])
def test_hf_groups(name, group):
    assert hf_group(name, num_hidden_layers=61) == group
    assert tensor_group(name, 61) == group


@pytest.mark.parametrize("name", [
    "model.layers.61.self_attn.q_a_proj.weight", "model.layers.61.embed_tokens.weight",
    "model.layers.61.eh_proj.weight", "model.layers.61.shared_head.head.weight",
    "model.layers.61.mlp.experts.0.gate_proj.weight",
])
def test_deepseek_v3_mtp_layer(name):
    assert hf_group(name, num_hidden_layers=61) == "mtp"
    assert tensor_group(name, 62) != "mtp"  # without MTP the same index is a decoder layer


@pytest.mark.parametrize("name,group", [
    ("token_embd.weight", "embedding"),
    ("output.weight", "lm_head"),
    ("output_norm.weight", "norms"),
    ("blk.0.attn_norm.weight", "norms"),
    ("blk.0.ffn_norm.weight", "norms"),
    ("blk.0.attn_q.weight", "attention"),
    ("blk.0.attn_kv_a_mqa.weight", "attention"),
    ("blk.0.attn_kv_a_norm.weight", "norms"),
    ("blk.0.attn_output.weight", "attention"),
    ("blk.0.ffn_gate.weight", "mlp"),
    ("blk.0.ffn_down.weight", "mlp"),
    ("blk.4.ffn_gate_exps.weight", "routed_experts"),
    ("blk.4.ffn_down_exps.weight", "routed_experts"),
    ("blk.4.ffn_gate_shexp.weight", "shared_experts"),
    ("blk.4.ffn_gate_inp.weight", "router"),
    ("blk.4.exp_probs_b.bias", "router"),
    ("blk.61.nextn.eh_proj.weight", "mtp"),
])
def test_gguf_groups(name, group):
    assert gguf_group(name) == group
    assert tensor_group(name) == group


def test_unknown_names_are_other():
    assert tensor_group("something.weird") == "other"
    assert tensor_group("blk.0.mystery.weight") == "other"


def test_templates_and_indices():
    assert template("model.layers.12.mlp.experts.255.up_proj.weight") == "model.layers.{i}.mlp.experts.{e}.up_proj.weight"
    assert template("blk.7.attn_q.weight") == "blk.{i}.attn_q.weight"
    assert template("model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert layer_index("model.layers.12.mlp.gate.weight") == 12
    assert layer_index("blk.3.attn_q.weight") == 3
    assert layer_index("lm_head.weight") is None


def test_scales():
    assert is_scale("model.layers.0.self_attn.q_a_proj.weight_scale_inv")
    assert is_scale("model.layers.0.mlp.up_proj.scales")
    assert not is_scale("model.layers.0.mlp.up_proj.weight")
    assert not is_scale("model.layers.0.mlp.gate.e_score_correction_bias")


@pytest.mark.parametrize("gguf,hf", [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output.weight", "lm_head.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("blk.2.attn_q.weight", "model.layers.2.self_attn.q_proj.weight"),
    ("blk.2.attn_q.bias", "model.layers.2.self_attn.q_proj.bias"),
    ("blk.2.attn_output.weight", "model.layers.2.self_attn.o_proj.weight"),
    ("blk.2.attn_norm.weight", "model.layers.2.input_layernorm.weight"),
    ("blk.2.ffn_norm.weight", "model.layers.2.post_attention_layernorm.weight"),
    ("blk.2.ffn_up.weight", "model.layers.2.mlp.up_proj.weight"),
    ("blk.2.ffn_down_exps.weight", "model.layers.2.mlp.experts.{e}.down_proj.weight"),
    ("blk.2.ffn_gate_inp.weight", "model.layers.2.mlp.gate.weight"),
    ("rope_freqs.weight", None),
])
def test_gguf_to_hf_name(gguf, hf):
    assert gguf_to_hf_name(gguf) == hf
    if hf is not None:  # both spellings land in the same group
        assert tensor_group(gguf) == tensor_group(hf)
