"""Checkpoint tensor name -> inventory group, for HF (safetensors) and GGUF (llama.cpp) names.

`inspect` sorts a checkpoint's tensors into the same groups as the analytic ParamInventory
(sizewise.arch.inventory.GROUPS) so the two can be compared group by group. Also: GGUF names
-> HF names (to compare a GGUF against an HF-named inventory), and name templates with
`{i}`/`{e}` placeholders, the form TensorSpec.name uses.
"""
from __future__ import annotations

import re

# Tensors that hold quantization scales / zero points, not parameters (DeepSeek-V3 fp8 block
# scales, compressed-tensors and GPTQ/AWQ packing, sizewise's float-zero int4). Counted separately by inspect.
_SCALE_SUFFIXES = (
    "weight_scale_inv", "weight_scale", "input_scale", "weight_zero_point", "weight_zero", "weight_g_idx",
    "scales", "zeros", "qzeros", "g_idx", "weight_global_scale", "input_global_scale", "weight_shape",
)
# Persistent-looking buffers some old checkpoints store that no model counts as parameters.
_IGNORED_BUFFERS = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")

_HF_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_HF_LAYER_T = re.compile(r"(^|\.)layers\.(\d+|\{\w+\})\.")
_GGUF_LAYER_T = re.compile(r"^blk\.(\d+|\{\w+\})\.")
_EXPERT_T = re.compile(r"\.experts\.(\d+|\{\w+\})\.")
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.")


def is_gguf_name(name: str) -> bool:
    """GGUF names are llama.cpp's short names: token_embd, blk.N.*, output, output_norm."""
    return name.startswith(("blk.", "token_embd", "output", "rope_", "per_layer_")) or name == "output_norm.weight"


def is_scale(name: str) -> bool:
    """True for quantization metadata tensors (scales, zero points, group indices)."""
    last = name.rsplit(".", 1)[-1]
    return last in _SCALE_SUFFIXES


def is_ignored_buffer(name: str) -> bool:
    return name.endswith(_IGNORED_BUFFERS)


def layer_index(name: str) -> int | None:
    """Decoder layer index of an HF (`layers.N.`) or GGUF (`blk.N.`) name, else None."""
    m = _HF_LAYER.search(name) or _GGUF_LAYER.match(name)
    return int(m.group(1)) if m else None


def template_experts(name: str) -> str:
    """Replace only the expert index by `{e}` (MTP specs keep their literal layer index)."""
    return _EXPERT_T.sub(".experts.{e}.", name) if ".experts." in name else name


def template(name: str) -> str:
    """Replace layer and expert indices by `{i}` / `{e}`: the TensorSpec.name form."""
    name = _HF_LAYER_T.sub(r"\1layers.{i}.", name)
    name = _GGUF_LAYER_T.sub("blk.{i}.", name)
    return template_experts(name)


def _is_norm(component: str) -> bool:
    return "norm" in component or component in ("ln_f", "ln_1", "ln_2")


def hf_group(name: str, num_hidden_layers: int | None = None) -> str:
    """Group of an HF checkpoint name. Layers at index >= num_hidden_layers are MTP (DeepSeek-V3)."""
    i = layer_index(name)
    if i is not None and num_hidden_layers is not None and i >= num_hidden_layers:
        return "mtp"
    parts = name.split(".")
    owner = parts[-2] if len(parts) >= 2 else name  # the module that owns the tensor
    if "lm_head" in parts:
        return "lm_head"
    if "embed_tokens" in parts or "wte" in parts or "wpe" in parts:
        return "embedding"
    if _is_norm(owner):
        return "norms"
    if "experts" in parts:
        return "routed_experts"
    if "shared_experts" in parts or "shared_expert" in parts:
        return "shared_experts"
    if owner in ("gate", "shared_expert_gate", "router") or parts[-1] == "e_score_correction_bias":
        return "router"
    if any(p in ("self_attn", "attention", "attn", "self_attention") for p in parts):
        return "attention"
    if any(p in ("mlp", "feed_forward", "block_sparse_moe", "ffn") for p in parts):
        return "mlp"
    raise KeyError(name)


def gguf_group(name: str, num_layers: int | None = None) -> str:
    """Group of a GGUF tensor name (llama.cpp's gguf-py TENSOR_NAMES conventions)."""
    i = layer_index(name)
    if ".nextn." in name or (i is not None and num_layers is not None and i >= num_layers):
        return "mtp"
    base = name.split(".")
    comp = base[2] if i is not None and len(base) > 2 else base[0]
    if comp in ("token_embd", "pos_embd", "token_types"):
        return "embedding"
    if comp == "output":
        return "lm_head"
    if comp == "exp_probs_b" or comp.startswith("ffn_gate_inp"):
        return "router"
    if _is_norm(comp):
        return "norms"
    if comp.endswith("_exps"):
        return "routed_experts"
    if comp.endswith("_shexp"):
        return "shared_experts"
    if comp.startswith("attn_"):
        return "attention"
    if comp.startswith("ffn_"):
        return "mlp"
    raise KeyError(name)


def tensor_group(name: str, num_layers: int | None = None) -> str:
    """Group of any checkpoint name (HF or GGUF); 'other' when the name is not recognised."""
    try:
        return gguf_group(name, num_layers) if is_gguf_name(name) else hf_group(name, num_layers)
    except KeyError:
        return "other"


# GGUF component -> HF module path inside a decoder layer (llama / qwen2 / mistral layout).
_GGUF_TO_HF_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "exp_probs_b": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}
_GGUF_TO_HF_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GGUF_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}


def gguf_to_hf_name(name: str) -> str | None:
    """HF name of a GGUF tensor (merged experts -> `mlp.experts.{e}.<proj>.weight`); None if unknown."""
    parts = name.split(".")
    i = layer_index(name)
    if i is None:
        stem, suffix = parts[0], ".".join(parts[1:])
        hf = _GGUF_TO_HF_GLOBAL.get(stem)
        return f"{hf}.{suffix}" if hf else None
    comp, suffix = parts[2], ".".join(parts[3:])
    if comp == "exp_probs_b":
        return f"model.layers.{i}.mlp.gate.e_score_correction_bias"
    if comp in _GGUF_EXPERTS:
        return f"model.layers.{i}.mlp.experts.{{e}}.{_GGUF_EXPERTS[comp]}.{suffix}"
    hf = _GGUF_TO_HF_LAYER.get(comp)
    return f"model.layers.{i}.{hf}.{suffix}" if hf else None
