"""Building blocks shared by the families: embeddings and head, GQA attention, gated MLP, norms.

Each function appends TensorSpecs with the real Hugging Face checkpoint names, using `{i}` for
the layer index and `{e}` for the expert index, so that `inspect` can map names to groups.
"""
from __future__ import annotations

from dataclasses import dataclass

from sizewise.arch.fields import opt_bool, opt_int, req_int
from sizewise.arch.inventory import ParamInventory
from sizewise.errors import SizewiseError

LAYER = "model.layers.{i}"


@dataclass(frozen=True)
class Common:
    """The fields every decoder-only family shares."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_pos: int
    tie: bool


def read_common(cfg: dict, intermediate_key: str = "intermediate_size") -> Common:
    hidden = req_int(cfg, "hidden_size")
    heads = req_int(cfg, "num_attention_heads")
    kv_heads = opt_int(cfg, "num_key_value_heads", heads)
    if heads % kv_heads:
        raise SizewiseError(f"config field 'num_key_value_heads' ({kv_heads}) must divide "
                            f"'num_attention_heads' ({heads}): fix it in config.json")
    head_dim = opt_int(cfg, "head_dim", None)
    if head_dim is None:
        if hidden % heads:
            raise SizewiseError(f"'hidden_size' ({hidden}) is not a multiple of 'num_attention_heads' ({heads}): "
                                "add an explicit 'head_dim' field to config.json")
        head_dim = hidden // heads
    return Common(
        vocab=req_int(cfg, "vocab_size"),
        hidden=hidden,
        layers=req_int(cfg, "num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=req_int(cfg, intermediate_key),
        max_pos=opt_int(cfg, "max_position_embeddings", 0, minimum=0) or 0,
        tie=opt_bool(cfg, "tie_word_embeddings", False),
    )


def add_embeddings(inv: ParamInventory, c: Common) -> None:
    """Token embedding, final norm, and the LM head unless tied (a tied head is stored once)."""
    inv.add("model.embed_tokens.weight", (c.vocab, c.hidden), 1, "embedding", "embedding")
    inv.add("model.norm.weight", (c.hidden,), 1, "norms", "norm")
    if not c.tie:
        inv.add("lm_head.weight", (c.vocab, c.hidden), 1, "lm_head", "lm_head")


def add_gqa_attention(inv: ParamInventory, c: Common, layers: int, *, qkv_bias: bool = False,
                      o_bias: bool = False, qk_norm: bool = False) -> None:
    """q/k/v/o projections (Llama layout), optional biases, optional per-head q/k RMSNorm (Qwen3)."""
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    a = f"{LAYER}.self_attn"
    inv.add(f"{a}.q_proj.weight", (q, c.hidden), layers, "attention", "linear")
    inv.add(f"{a}.k_proj.weight", (kv, c.hidden), layers, "attention", "linear")
    inv.add(f"{a}.v_proj.weight", (kv, c.hidden), layers, "attention", "linear")
    inv.add(f"{a}.o_proj.weight", (c.hidden, q), layers, "attention", "linear")
    if qkv_bias:
        inv.add(f"{a}.q_proj.bias", (q,), layers, "attention", "bias")
        inv.add(f"{a}.k_proj.bias", (kv,), layers, "attention", "bias")
        inv.add(f"{a}.v_proj.bias", (kv,), layers, "attention", "bias")
    if o_bias:
        inv.add(f"{a}.o_proj.bias", (c.hidden,), layers, "attention", "bias")
    if qk_norm:
        inv.add(f"{a}.q_norm.weight", (c.head_dim,), layers, "norms", "norm")
        inv.add(f"{a}.k_norm.weight", (c.head_dim,), layers, "norms", "norm")


def add_layer_norms(inv: ParamInventory, hidden: int, layers: int, prefix: str = LAYER) -> None:
    inv.add(f"{prefix}.input_layernorm.weight", (hidden,), layers, "norms", "norm")
    inv.add(f"{prefix}.post_attention_layernorm.weight", (hidden,), layers, "norms", "norm")


def add_gated_mlp(inv: ParamInventory, prefix: str, hidden: int, inter: int, copies: int, group: str,
                  active_copies: int | None = None, bias: bool = False,
                  names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> None:
    """SwiGLU MLP: gate and up map hidden->inter, down maps inter->hidden.

    `names` lets Mixtral use its w1 (gate), w3 (up), w2 (down) checkpoint names.
    """
    gate, up, down = names
    inv.add(f"{prefix}.{gate}.weight", (inter, hidden), copies, group, "linear", active_copies)
    inv.add(f"{prefix}.{up}.weight", (inter, hidden), copies, group, "linear", active_copies)
    inv.add(f"{prefix}.{down}.weight", (hidden, inter), copies, group, "linear", active_copies)
    if bias:
        inv.add(f"{prefix}.{gate}.bias", (inter,), copies, group, "bias", active_copies)
        inv.add(f"{prefix}.{up}.bias", (inter,), copies, group, "bias", active_copies)
        inv.add(f"{prefix}.{down}.bias", (hidden,), copies, group, "bias", active_copies)


def check_top_k(top_k: int, experts: int, key: str = "num_experts_per_tok") -> None:
    if top_k > experts:
        raise SizewiseError(f"config field '{key}' ({top_k}) exceeds the number of routed experts ({experts}): "
                            "fix it in config.json")
