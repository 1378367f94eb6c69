"""Hand-built inventories for size tests (no dependency on sizewise.arch's config readers)."""
from __future__ import annotations

from sizewise.arch.inventory import ArchInfo, ParamInventory


def dense_arch(layers=8, hidden=4096, heads=32, kv_heads=8, vocab=1000, inter=8192, tie=False, **kw) -> ArchInfo:
    return ArchInfo(model_type="llama", num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                    num_kv_heads=kv_heads, head_dim=hidden // heads, vocab_size=vocab, intermediate_size=inter,
                    max_position_embeddings=4096, tie_word_embeddings=tie,
                    attention="mha" if heads == kv_heads else "gqa", **kw)


def dense_inventory(layers=8, hidden=4096, heads=32, kv_heads=8, vocab=1000, inter=8192, tie=False) -> ParamInventory:
    """A Llama-layout decoder written out tensor by tensor."""
    a = dense_arch(layers, hidden, heads, kv_heads, vocab, inter, tie)
    hd = hidden // heads
    inv = ParamInventory("tiny-llama", a)
    inv.add("model.embed_tokens.weight", (vocab, hidden), 1, "embedding", "embedding")
    inv.add("model.norm.weight", (hidden,), 1, "norms", "norm")
    if not tie:
        inv.add("lm_head.weight", (vocab, hidden), 1, "lm_head", "lm_head")
    L = "model.layers.{i}"
    inv.add(f"{L}.self_attn.q_proj.weight", (heads * hd, hidden), layers, "attention", "linear")
    inv.add(f"{L}.self_attn.k_proj.weight", (kv_heads * hd, hidden), layers, "attention", "linear")
    inv.add(f"{L}.self_attn.v_proj.weight", (kv_heads * hd, hidden), layers, "attention", "linear")
    inv.add(f"{L}.self_attn.o_proj.weight", (hidden, heads * hd), layers, "attention", "linear")
    inv.add(f"{L}.mlp.gate_proj.weight", (inter, hidden), layers, "mlp", "linear")
    inv.add(f"{L}.mlp.up_proj.weight", (inter, hidden), layers, "mlp", "linear")
    inv.add(f"{L}.mlp.down_proj.weight", (hidden, inter), layers, "mlp", "linear")
    inv.add(f"{L}.input_layernorm.weight", (hidden,), layers, "norms", "norm")
    inv.add(f"{L}.post_attention_layernorm.weight", (hidden,), layers, "norms", "norm")
    return inv


def one_matrix(rows: int, cols: int, kind: str = "linear", group: str = "attention") -> ParamInventory:
    inv = ParamInventory("one", dense_arch(layers=1))
    inv.add("model.layers.{i}.self_attn.q_proj.weight", (rows, cols), 1, group, kind)
    return inv
