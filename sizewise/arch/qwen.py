"""Qwen families: qwen2 (R1-Distill-Qwen, Qwen2.5: q/k/v biases), qwen3 (per-head q/k RMSNorm),
qwen3_moe (qwen3 attention + routed experts without shared experts)."""
from __future__ import annotations

from dataclasses import replace

from sizewise.arch.blocks import (LAYER, add_embeddings, add_gated_mlp, add_gqa_attention, add_layer_norms,
                                  check_top_k, read_common)
from sizewise.arch.fields import int_list, opt_bool, opt_int, req_int
from sizewise.arch.inventory import ParamInventory
from sizewise.arch.llama import dense_arch


def qwen2(cfg: dict, name: str) -> ParamInventory:
    c = read_common(cfg)
    inv = ParamInventory(name, dense_arch("qwen2", c, cfg))
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers, qkv_bias=True)  # Qwen2 always has q/k/v biases, never o
    add_gated_mlp(inv, f"{LAYER}.mlp", c.hidden, c.intermediate, c.layers, "mlp")
    add_layer_norms(inv, c.hidden, c.layers)
    return inv


def qwen3(cfg: dict, name: str) -> ParamInventory:
    c = read_common(cfg)
    bias = opt_bool(cfg, "attention_bias", False)
    inv = ParamInventory(name, dense_arch("qwen3", c, cfg))
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers, qkv_bias=bias, o_bias=bias, qk_norm=True)
    add_gated_mlp(inv, f"{LAYER}.mlp", c.hidden, c.intermediate, c.layers, "mlp")
    add_layer_norms(inv, c.hidden, c.layers)
    return inv


def qwen3_moe_layers(cfg: dict, layers: int) -> list[int]:
    """Which layers are sparse: as in HF Qwen3MoeDecoderLayer (not in mlp_only_layers and
    (i + 1) % decoder_sparse_step == 0)."""
    step = opt_int(cfg, "decoder_sparse_step", 1)
    dense_only = set(int_list(cfg, "mlp_only_layers"))
    return [i for i in range(layers) if i not in dense_only and (i + 1) % step == 0]


def qwen3_moe(cfg: dict, name: str) -> ParamInventory:
    c = read_common(cfg)
    experts = req_int(cfg, "num_experts")
    top_k = req_int(cfg, "num_experts_per_tok")
    check_top_k(top_k, experts)
    moe_inter = req_int(cfg, "moe_intermediate_size")
    bias = opt_bool(cfg, "attention_bias", False)
    n_moe = len(qwen3_moe_layers(cfg, c.layers))
    n_dense = c.layers - n_moe
    arch = replace(dense_arch("qwen3_moe", c, cfg), num_experts=experts, experts_per_token=top_k,
                   moe_intermediate_size=moe_inter, num_moe_layers=n_moe)
    inv = ParamInventory(name, arch)
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers, qkv_bias=bias, o_bias=bias, qk_norm=True)
    add_gated_mlp(inv, f"{LAYER}.mlp", c.hidden, c.intermediate, n_dense, "mlp")
    inv.add(f"{LAYER}.mlp.gate.weight", (experts, c.hidden), n_moe, "router", "router")
    add_gated_mlp(inv, f"{LAYER}.mlp.experts.{{e}}", c.hidden, moe_inter, n_moe * experts, "routed_experts",
                  active_copies=n_moe * top_k)
    add_layer_norms(inv, c.hidden, c.layers)
    return inv
