"""Mixtral: Mistral attention with every FFN replaced by `num_local_experts` SwiGLU experts
(checkpoint names w1=gate, w3=up, w2=down) and a linear router; no shared experts."""
from __future__ import annotations

from dataclasses import replace

from sizewise.arch.blocks import (LAYER, add_embeddings, add_gated_mlp, add_gqa_attention, add_layer_norms,
                                  check_top_k, read_common)
from sizewise.arch.fields import req_int
from sizewise.arch.inventory import ParamInventory
from sizewise.arch.llama import dense_arch


def mixtral(cfg: dict, name: str) -> ParamInventory:
    c = read_common(cfg)
    experts = req_int(cfg, "num_local_experts")
    top_k = req_int(cfg, "num_experts_per_tok")
    check_top_k(top_k, experts)
    arch = replace(dense_arch("mixtral", c, cfg), num_experts=experts, experts_per_token=top_k,
                   moe_intermediate_size=c.intermediate, num_moe_layers=c.layers)
    inv = ParamInventory(name, arch)
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers)
    moe = f"{LAYER}.block_sparse_moe"
    inv.add(f"{moe}.gate.weight", (experts, c.hidden), c.layers, "router", "router")
    add_gated_mlp(inv, f"{moe}.experts.{{e}}", c.hidden, c.intermediate, c.layers * experts, "routed_experts",
                  active_copies=c.layers * top_k, names=("w1", "w3", "w2"))
    add_layer_norms(inv, c.hidden, c.layers)
    return inv
