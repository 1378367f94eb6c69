"""Tiny architectures for the plan tests, built from config dicts through the real arch families."""
from __future__ import annotations

from sizewise.arch.families import inventory_from_config


def llama_cfg(heads: int = 40, kv_heads: int = 8, layers: int = 4, hidden: int = 640, vocab: int = 1000,
              inter: int = 1024, tie: bool = False) -> dict:
    return {"model_type": "llama", "hidden_size": hidden, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "num_hidden_layers": layers, "intermediate_size": inter,
            "vocab_size": vocab, "max_position_embeddings": 4096, "tie_word_embeddings": tie,
            "torch_dtype": "bfloat16"}


def tiny_llama(**kw):
    return inventory_from_config(llama_cfg(**kw), "tiny-llama")


def tiny_mixtral(experts: int = 8, top_k: int = 2, layers: int = 4):
    cfg = llama_cfg(heads=8, kv_heads=4, layers=layers, hidden=256, inter=512)
    cfg.update(model_type="mixtral", num_local_experts=experts, num_experts_per_tok=top_k)
    return inventory_from_config(cfg, "tiny-mixtral")
