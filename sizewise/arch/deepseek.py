"""DeepSeek MoE families: deepseek (DeepSeek-MoE 16B), deepseek_v2 (V2, V2-Lite) and deepseek_v3 (V3, R1).

Shared structure (DeepSeekMoE): the first `first_k_dense_replace` layers (and layers where
`i % moe_layer_freq != 0`) keep a dense SwiGLU MLP; the others hold `n_routed_experts` small
experts (top-`num_experts_per_tok` per token), `n_shared_experts` fused into one always-on MLP of
width `moe_intermediate_size * n_shared_experts`, and a router `mlp.gate.weight`.

V2/V3 replace Llama attention with Multi-head Latent Attention (MLA): queries go through an
optional low-rank pair (q_a_proj -> q_a_layernorm -> q_b_proj, or a plain q_proj when
`q_lora_rank` is null), keys/values through `kv_a_proj_with_mqa` (latent + shared rope key),
`kv_a_layernorm` and `kv_b_proj`.

V3 adds the router's `e_score_correction_bias` (topk_method "noaux_tc"; stored in the checkpoint,
a buffer in transformers) and `num_nextn_predict_layers` multi-token-prediction (MTP) layers. The
published checkpoint stores each MTP layer as `model.layers.{num_hidden_layers + k}.*`: a full
decoder layer plus `enorm`, `hnorm`, `eh_proj` [hidden, 2*hidden], `shared_head.norm`, and its own
copies of the embedding (`embed_tokens`) and output head (`shared_head.head`) (see the last shard,
model-00163-of-000163.safetensors, of deepseek-ai/DeepSeek-V3). We count all of them, in group
"mtp", because they are on disk; DeepSeek's README_WEIGHTS.md calls the embedding and head copies
"shared", so its "11.5B unique MTP parameters" excludes them while its 685B total includes them.
"""
from __future__ import annotations

from dataclasses import dataclass

from sizewise.arch.blocks import (LAYER, Common, add_embeddings, add_gated_mlp, add_gqa_attention, add_layer_norms,
                                  check_top_k, read_common)
from sizewise.arch.fields import opt_bool, opt_int, req_int
from sizewise.arch.inventory import ArchInfo, ParamInventory


@dataclass(frozen=True)
class Moe:
    experts: int  # routed experts per MoE layer (0: dense model)
    top_k: int
    shared: int
    inter: int  # moe_intermediate_size
    first_dense: int
    freq: int

    def is_moe_layer(self, i: int) -> bool:
        return self.experts > 0 and i >= self.first_dense and i % self.freq == 0


@dataclass(frozen=True)
class Mla:
    q_lora: int | None
    kv_lora: int
    nope: int
    rope: int
    v: int


def read_moe(cfg: dict) -> Moe:
    experts = opt_int(cfg, "n_routed_experts", 0) or 0
    if not experts:
        return Moe(0, 0, 0, 0, 0, 1)
    top_k = req_int(cfg, "num_experts_per_tok")
    check_top_k(top_k, experts)
    return Moe(experts=experts, top_k=top_k, shared=opt_int(cfg, "n_shared_experts", 0, minimum=0) or 0,
               inter=req_int(cfg, "moe_intermediate_size"),
               first_dense=opt_int(cfg, "first_k_dense_replace", 0, minimum=0) or 0,
               freq=opt_int(cfg, "moe_layer_freq", 1))


def read_mla(cfg: dict) -> Mla:
    return Mla(q_lora=opt_int(cfg, "q_lora_rank", None), kv_lora=req_int(cfg, "kv_lora_rank"),
               nope=req_int(cfg, "qk_nope_head_dim"), rope=req_int(cfg, "qk_rope_head_dim"),
               v=req_int(cfg, "v_head_dim"))


def add_mla_attention(inv: ParamInventory, c: Common, m: Mla, layers: int, bias: bool,
                      prefix: str = LAYER, group: str = "attention") -> None:
    """MLA projections as in modeling_deepseek.py (V2/V3); biases only where `attention_bias` puts them."""
    a = f"{prefix}.self_attn"
    norm_group = "norms" if group == "attention" else group
    q_out = c.heads * (m.nope + m.rope)
    if m.q_lora is None:
        inv.add(f"{a}.q_proj.weight", (q_out, c.hidden), layers, group, "linear")
    else:
        inv.add(f"{a}.q_a_proj.weight", (m.q_lora, c.hidden), layers, group, "linear")
        if bias:
            inv.add(f"{a}.q_a_proj.bias", (m.q_lora,), layers, group, "bias")
        inv.add(f"{a}.q_a_layernorm.weight", (m.q_lora,), layers, norm_group, "norm")
        inv.add(f"{a}.q_b_proj.weight", (q_out, m.q_lora), layers, group, "linear")
    inv.add(f"{a}.kv_a_proj_with_mqa.weight", (m.kv_lora + m.rope, c.hidden), layers, group, "linear")
    if bias:
        inv.add(f"{a}.kv_a_proj_with_mqa.bias", (m.kv_lora + m.rope,), layers, group, "bias")
    inv.add(f"{a}.kv_a_layernorm.weight", (m.kv_lora,), layers, norm_group, "norm")
    inv.add(f"{a}.kv_b_proj.weight", (c.heads * (m.nope + m.v), m.kv_lora), layers, group, "linear")
    inv.add(f"{a}.o_proj.weight", (c.hidden, c.heads * m.v), layers, group, "linear")
    if bias:
        inv.add(f"{a}.o_proj.bias", (c.hidden,), layers, group, "bias")


def add_ffn(inv: ParamInventory, c: Common, moe: Moe, n_dense: int, n_moe: int, score_bias: bool,
            prefix: str = LAYER, mtp: bool = False) -> None:
    """Dense MLPs for `n_dense` layers and DeepSeekMoE blocks for `n_moe` layers."""
    g = (lambda name: "mtp") if mtp else (lambda name: name)
    mlp = f"{prefix}.mlp"
    add_gated_mlp(inv, mlp, c.hidden, c.intermediate, n_dense, g("mlp"))
    if not n_moe:
        return
    inv.add(f"{mlp}.gate.weight", (moe.experts, c.hidden), n_moe, g("router"), "router")
    if score_bias:
        inv.add(f"{mlp}.gate.e_score_correction_bias", (moe.experts,), n_moe, g("router"), "buffer")
    if moe.shared:
        add_gated_mlp(inv, f"{mlp}.shared_experts", c.hidden, moe.inter * moe.shared, n_moe, g("shared_experts"))
    add_gated_mlp(inv, f"{mlp}.experts.{{e}}", c.hidden, moe.inter, n_moe * moe.experts, g("routed_experts"),
                  active_copies=n_moe * moe.top_k)


def _arch(model_type: str, c: Common, moe: Moe, n_moe: int, mla: Mla | None, mtp: int) -> ArchInfo:
    mla_fields = {}
    if mla is not None:
        mla_fields = dict(attention="mla", num_kv_heads=c.heads, head_dim=mla.nope + mla.rope, v_head_dim=mla.v,
                          kv_lora_rank=mla.kv_lora, q_lora_rank=mla.q_lora, qk_rope_head_dim=mla.rope,
                          qk_nope_head_dim=mla.nope)
    base = dict(model_type=model_type, num_layers=c.layers, hidden_size=c.hidden, num_attention_heads=c.heads,
                num_kv_heads=c.kv_heads, head_dim=c.head_dim, vocab_size=c.vocab, intermediate_size=c.intermediate,
                max_position_embeddings=c.max_pos, tie_word_embeddings=c.tie,
                attention="mha" if c.kv_heads == c.heads else "gqa",
                num_experts=moe.experts, experts_per_token=moe.top_k, num_shared_experts=moe.shared,
                moe_intermediate_size=moe.inter, num_moe_layers=n_moe, num_mtp_layers=mtp)
    base.update(mla_fields)
    return ArchInfo(**base)


def deepseek(cfg: dict, name: str) -> ParamInventory:
    """DeepSeek-MoE (model_type "deepseek", remote code only): Llama attention + DeepSeekMoE."""
    c = read_common(cfg)
    moe = read_moe(cfg)
    n_moe = sum(moe.is_moe_layer(i) for i in range(c.layers))
    inv = ParamInventory(name, _arch("deepseek", c, moe, n_moe, None, 0))
    bias = opt_bool(cfg, "attention_bias", False)
    add_embeddings(inv, c)
    add_gqa_attention(inv, c, c.layers, qkv_bias=bias, o_bias=bias)
    add_ffn(inv, c, moe, c.layers - n_moe, n_moe, score_bias=False)
    add_layer_norms(inv, c.hidden, c.layers)
    return inv


def _mla_model(cfg: dict, name: str, model_type: str, v3: bool) -> ParamInventory:
    c = read_common(cfg)
    moe = read_moe(cfg)
    mla = read_mla(cfg)
    bias = opt_bool(cfg, "attention_bias", False)
    # V3's router carries the score-correction bias when routing is "noaux_tc" (V3/R1 default).
    score_bias = v3 and moe.experts > 0 and cfg.get("topk_method", "noaux_tc") == "noaux_tc"
    mtp = (opt_int(cfg, "num_nextn_predict_layers", 0, minimum=0) or 0) if v3 else 0
    n_moe = sum(moe.is_moe_layer(i) for i in range(c.layers))
    inv = ParamInventory(name, _arch(model_type, c, moe, n_moe, mla, mtp))
    add_embeddings(inv, c)
    add_mla_attention(inv, c, mla, c.layers, bias)
    add_ffn(inv, c, moe, c.layers - n_moe, n_moe, score_bias)
    add_layer_norms(inv, c.hidden, c.layers)
    for k in range(mtp):
        _add_mtp_layer(inv, c, moe, mla, bias, score_bias, c.layers + k)
    return inv


def _add_mtp_layer(inv: ParamInventory, c: Common, moe: Moe, mla: Mla, bias: bool, score_bias: bool,
                   idx: int) -> None:
    """One MTP module as stored on disk (literal layer index, so names never collide with `{i}`)."""
    p = f"model.layers.{idx}"
    inv.add(f"{p}.embed_tokens.weight", (c.vocab, c.hidden), 1, "mtp", "embedding")
    inv.add(f"{p}.enorm.weight", (c.hidden,), 1, "mtp", "norm")
    inv.add(f"{p}.hnorm.weight", (c.hidden,), 1, "mtp", "norm")
    inv.add(f"{p}.eh_proj.weight", (c.hidden, 2 * c.hidden), 1, "mtp", "linear")
    add_mla_attention(inv, c, mla, 1, bias, prefix=p, group="mtp")
    is_moe = moe.is_moe_layer(idx)
    add_ffn(inv, c, moe, 0 if is_moe else 1, 1 if is_moe else 0, score_bias, prefix=p, mtp=True)
    inv.add(f"{p}.input_layernorm.weight", (c.hidden,), 1, "mtp", "norm")
    inv.add(f"{p}.post_attention_layernorm.weight", (c.hidden,), 1, "mtp", "norm")
    inv.add(f"{p}.shared_head.norm.weight", (c.hidden,), 1, "mtp", "norm")
    inv.add(f"{p}.shared_head.head.weight", (c.vocab, c.hidden), 1, "mtp", "lm_head")


def deepseek_v2(cfg: dict, name: str) -> ParamInventory:
    return _mla_model(cfg, name, "deepseek_v2", v3=False)


def deepseek_v3(cfg: dict, name: str) -> ParamInventory:
    return _mla_model(cfg, name, "deepseek_v3", v3=True)
