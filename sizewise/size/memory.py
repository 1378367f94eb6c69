"""Serving memory: weights + KV cache + transient activations + runtime overhead.

The KV cache is exact arithmetic from the architecture. Activations and overhead are stated
models, not measurements: their formulas and constants are named here so a reader can check them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

from sizewise.arch.inventory import ArchInfo, ParamInventory
from sizewise.errors import SizewiseError
from sizewise.size.formats import get_format, size_in_format
from sizewise.units import GiB

KV_DTYPE_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}

# Fixed runtime overhead: the CUDA context plus cuBLAS / NCCL workspaces. PyTorch on a Hopper
# GPU shows roughly 0.5-1 GiB in use before the first tensor is allocated; we take the upper end.
# An assumption, not a measurement made by sizewise.
RUNTIME_FIXED_BYTES = 1 * GiB
# Caching-allocator fragmentation and small buffers, as a fraction of everything else.
ALLOCATOR_FRAGMENTATION = 0.05
# Serving engines prefill in chunks (chunked prefill); the transient buffers scale with the chunk.
PREFILL_CHUNK_TOKENS = 8192
# Logits are computed in fp32 for the last position of each sequence only (sampling needs no more).
LOGITS_BYTES = 4


def _check_positive(**kw: int) -> None:
    for k, v in kw.items():
        if not isinstance(v, int) or v < 1:
            raise SizewiseError(f"--{k.replace('_', '-')} must be a positive integer, got {v}")


def kv_bits(kv_dtype: str) -> int:
    if kv_dtype not in KV_DTYPE_BITS:
        raise SizewiseError(f"unknown KV cache dtype {kv_dtype!r}: choose one of {', '.join(KV_DTYPE_BITS)}")
    return KV_DTYPE_BITS[kv_dtype]


def kv_values_per_token_layer(arch: ArchInfo, latent: bool = True) -> int:
    """Cached values per token per layer: K and V heads (MHA/GQA), or MLA's latent."""
    if arch.attention == "mla":
        if latent:
            return int(arch.kv_lora_rank or 0) + int(arch.qk_rope_head_dim or 0)
        qk = int(arch.qk_nope_head_dim or 0) + int(arch.qk_rope_head_dim or 0)
        return arch.num_attention_heads * (qk + int(arch.v_head_dim or arch.head_dim))
    v_dim = arch.v_head_dim or arch.head_dim
    return arch.num_kv_heads * (arch.head_dim + v_dim)


def kv_tokens(arch: ArchInfo, context: int) -> int:
    """Tokens each layer keeps: the whole context, or the sliding window where every layer slides."""
    return min(context, arch.sliding_window) if arch.sliding_window else context


def kv_cache_bytes(arch: ArchInfo, context: int, batch: int, kv_dtype: str = "bf16", latent: bool = True) -> int:
    """Bytes of the KV cache for `batch` sequences of `context` tokens (MTP layers not counted:
    plain decoding does not run them). Payload only: per-tensor fp8/int8 scales are negligible;
    group-wise int4 schemes (KIVI-style) would add their scales on top."""
    _check_positive(context=context, batch=batch)
    values = kv_values_per_token_layer(arch, latent)
    return ceil(values * arch.num_layers * kv_tokens(arch, context) * batch * kv_bits(kv_dtype) / 8)


def activation_dtype_bytes(weights_fmt: str) -> int:
    return 4 if get_format(weights_fmt).name == "fp32" else 2


@dataclass
class Activations:
    bytes: int
    tokens: int  # tokens in the prefill chunk
    parts: dict[str, int] = field(default_factory=dict)
    formula: str = ""


def activation_bytes(arch: ArchInfo, context: int, batch: int, act_bytes: int = 2) -> Activations:
    """Peak transient memory of one forward over a prefill chunk, assuming a fused (flash)
    attention kernel so no seq x seq score matrix is materialized.

    T = min(batch*context, PREFILL_CHUNK_TOKENS); peak = residual + normed input (2*T*h)
    + the largest of: MLP gate/up outputs (2*T*I_active), attention projections (Q,K,V,out for
    T tokens; MLA also decompresses K/V over the attended prefix), logits (batch*vocab fp32)."""
    _check_positive(context=context, batch=batch)
    t = min(batch * context, PREFILL_CHUNK_TOKENS)
    h = arch.hidden_size
    i_active = arch.intermediate_size
    if arch.num_experts:
        i_active = max(i_active, (arch.experts_per_token + arch.num_shared_experts) * arch.moe_intermediate_size)
    mlp = 2 * t * i_active * act_bytes
    if arch.attention == "mla":
        qk = int(arch.qk_nope_head_dim or 0) + int(arch.qk_rope_head_dim or 0)
        v = int(arch.v_head_dim or arch.head_dim)
        prefix = min(batch * context, max(t, kv_tokens(arch, context)))
        attn = (t * arch.num_attention_heads * (qk + v) + prefix * arch.num_attention_heads * (qk + v)) * act_bytes
    else:
        v = arch.v_head_dim or arch.head_dim
        attn = t * (arch.num_attention_heads * (arch.head_dim + v) + arch.num_kv_heads * (arch.head_dim + v)) * act_bytes
    logits = batch * arch.vocab_size * LOGITS_BYTES
    stream = 2 * t * h * act_bytes
    parts = {"residual_stream": stream, "mlp": mlp, "attention": attn, "logits": logits}
    return Activations(stream + max(mlp, attn, logits), t, parts,
                       "2*T*h + max(2*T*I_active, attention projections, batch*vocab*4) bytes, "
                       f"T = min(batch*context, {PREFILL_CHUNK_TOKENS})")


@dataclass
class InferenceMemory:
    weights_format: str
    kv_dtype: str
    context: int
    batch: int
    weights: int
    kv_cache: int
    kv_cache_naive: int | None  # MLA only: the per-head K/V a naive implementation would cache
    activations: int
    overhead: int
    total_bytes: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("weights_format", "kv_dtype", "context", "batch", "weights",
                                              "kv_cache", "kv_cache_naive", "activations", "overhead",
                                              "total_bytes", "notes")}


def _without_mtp(inv: ParamInventory) -> ParamInventory:
    return ParamInventory(inv.name, inv.arch, [t for t in inv.tensors if t.group != "mtp"])


def inference_memory(inv: ParamInventory, weights_fmt: str = "bf16", context: int = 4096, batch: int = 1,
                     kv_dtype: str = "bf16") -> InferenceMemory:
    """Memory to serve `batch` sequences of `context` tokens with weights in `weights_fmt`."""
    _check_positive(context=context, batch=batch)
    kv_bits(kv_dtype)
    arch = inv.arch
    served = _without_mtp(inv)
    weights = size_in_format(served, weights_fmt).bytes
    kv = kv_cache_bytes(arch, context, batch, kv_dtype, latent=True)
    naive = kv_cache_bytes(arch, context, batch, kv_dtype, latent=False) if arch.attention == "mla" else None
    act = activation_bytes(arch, context, batch, activation_dtype_bytes(weights_fmt))
    overhead = RUNTIME_FIXED_BYTES + int(ALLOCATOR_FRAGMENTATION * (weights + kv + act.bytes))
    notes = [f"activations: {act.formula}",
             f"overhead: {RUNTIME_FIXED_BYTES // GiB} GiB CUDA context/workspaces + "
             f"{ALLOCATOR_FRAGMENTATION:.0%} allocator fragmentation (assumptions)"]
    if inv.mtp:
        notes.append(f"weights exclude the {inv.mtp:,}-parameter MTP layer (not run in plain decoding)")
    if naive is not None:
        notes.append("KV cache: MLA latent (kv_lora_rank + qk_rope_head_dim per token per layer), as "
                     "vLLM, SGLang and transformers 5 cache it; kv_cache_naive: per-head K and V")
    if arch.sliding_window and arch.sliding_window < context:
        notes.append(f"KV cache capped at the {arch.sliding_window}-token sliding window")
    return InferenceMemory(get_format(weights_fmt).name, kv_dtype, context, batch, weights, kv, naive,
                           act.bytes, overhead, weights + kv + act.bytes + overhead, notes)
