"""Llama-layout dense decoders: llama (SmolLM2, Llama 3.x, deepseek-llm, deepseek-coder,
R1-Distill-Llama) and mistral. Same tensors; Llama may add attention/MLP biases."""
from __future__ import annotations

from sizewise.arch.blocks import (LAYER, Common, add_embeddings, add_gated_mlp, add_gqa_attention,
                                  add_layer_norms, read_common)
from sizewise.arch.fields import opt_bool, opt_int
from sizewise.arch.inventory import ArchInfo, ParamInventory


def dense_arch(model_type: str, c: Common, cfg: dict) -> ArchInfo:
    return ArchInfo(
        model_type=model_type, num_layers=c.layers, hidden_size=c.hidden,
        num_attention_heads=c.heads, num_kv_heads=c.kv_heads, head_dim=c.head_dim,
        vocab_size=c.vocab, intermediate_size=c.intermediate, max_position_embeddings=c.max_pos,
        tie_word_embeddings=c.tie, attention="mha" if c.kv_heads == c.heads else "gqa",
        sliding_window=opt_int(cfg, "sliding_window", None) if cfg.get("use_sliding_window", True) else None,
    )


def llama(cfg: dict, name: str) -> ParamInventory:
    c = read_common(cfg)
    attn_bias = opt_bool(cfg, "attention_bias", False)
    inv = ParamInventory(name, dense_arch(cfg["model_type"], c, cfg))
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers, qkv_bias=attn_bias, o_bias=attn_bias)
    add_gated_mlp(inv, f"{LAYER}.mlp", c.hidden, c.intermediate, c.layers, "mlp",
                  bias=opt_bool(cfg, "mlp_bias", False))
    add_layer_norms(inv, c.hidden, c.layers)
    return inv


def mistral(cfg: dict, name: str) -> ParamInventory:
    c = read_common(cfg)
    inv = ParamInventory(name, dense_arch("mistral", c, cfg))
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers)
    add_gated_mlp(inv, f"{LAYER}.mlp", c.hidden, c.intermediate, c.layers, "mlp")
    add_layer_norms(inv, c.hidden, c.layers)
    return inv
