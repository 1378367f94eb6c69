"""One decoder layer for one new token per row, on sizewise's kernels: the path both the lean decoder
(`eval`, `study`) and the paged serving runner take for decode steps.

Why a shared fused path: once the matmuls are fast, a decode step of a small model is mostly the torch
calls around them. The general paths spend ~60 per layer (HF RMSNorm's seven ops twice, rotary as
cat/mul/add, cache writes, a KV gather or an SDPA with repeated KV heads, masks). Here a layer is
F.rms_norm, q/k/v in one kernel call (one parallel region, the activations converted once), one
`paged_attention` call (rotary, K/V write, attention over the cache through a block table), o, a second
F.rms_norm, gate/up in one call, SiLU x up, down: about a dozen calls; and where all seven projections
are int4 on sizewise's kernel with a SiLU MLP, the same sequence as one `decode_layer` call (measured on
int4-g32-s6 at batch 1: F.rms_norm alone cost 18 us a call, 1.1 ms of an 11 ms token); where every layer
is such a layer, the whole stack is one `decode_stack` call per step (`stack`, `run`). The modules' own forwards run
wherever a projection is not an int4 module on sizewise's kernel (fp32 or bf16 Linears, int8 kinds),
so any weight format works; the specs only skip Python around kernels those forwards would call anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sizewise import kernels


def kernel_specs(mods) -> tuple | None:
    """(kinds, weights, scales, group sizes, biases) for kernels.linear_multi when every module is an int4
    Linear on sizewise's kernel with bf16 activations (exactly what its forward would compute), else None."""
    from sizewise.compression.packed import Int4WeightOnlyLinear

    if not all(isinstance(m, Int4WeightOnlyLinear) and m._own and m.act_dtype == torch.bfloat16 for m in mods):
        return None
    return ([kernels.Q4] * len(mods), [m.weight_q4 for m in mods], [m._sz for m in mods],
            [m.group_size for m in mods], [m.bias for m in mods])


@dataclass
class LayerPlan:
    """What one decoder layer's fused decode needs, gathered once per model."""

    n1_w: torch.Tensor
    n1_eps: float
    q: torch.nn.Module
    k: torch.nn.Module
    v: torch.nn.Module
    o: torch.nn.Module
    n2_w: torch.Tensor
    n2_eps: float
    gate: torch.nn.Module
    up: torch.nn.Module
    down: torch.nn.Module
    act: object
    scale: float
    qkv: tuple | None
    gate_up: tuple | None
    whole: tuple | None = None  # all seven projections on sizewise's int4 kernel and SiLU: one decode_layer call

    @classmethod
    def build(cls, n1, n2, q, k, v, o, gate, up, down, act, scale: float) -> "LayerPlan":
        whole = kernel_specs([q, k, v, o, gate, up, down]) if _is_silu(act) else None
        return cls(n1.weight, float(n1.variance_epsilon), q, k, v, o, n2.weight, float(n2.variance_epsilon),
                   gate, up, down, act, float(scale), kernel_specs([q, k, v]), kernel_specs([gate, up]), whole)


def _is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def why_not(pool_dtype: torch.dtype, norms, attns, interleaved_rope: bool) -> str | None:
    """Why a model cannot take the fused decode path (None when it can)."""
    if kernels.ops() is None:
        return kernels.why_not()
    if pool_dtype != torch.float32:
        return f"the KV cache holds {pool_dtype} (the fused path reads fp32)"
    if interleaved_rope:
        return "interleaved rotary pairs"
    for n in norms:
        if not hasattr(n, "variance_epsilon") or getattr(n, "weight", None) is None:
            return f"{type(n).__name__} is not an RMSNorm with a weight"
    for a in attns:
        if hasattr(a, "q_norm"):
            return "per-head q/k norms"
        if getattr(a, "sliding_window", None):
            return "sliding-window attention"
    return None


def stack(plans: list[LayerPlan], head_dim: int) -> list | None:
    """Per-layer handles for `run` (weights checked once) when every layer takes the whole-layer kernel,
    else None (the caller goes layer by layer through `layer`)."""
    if not plans or any(p.whole is None for p in plans):
        return None
    ops = kernels.loaded()
    return [ops.make_dec_layer(p.n1_w, p.n1_eps, p.n2_w, p.n2_eps, *p.whole, p.scale, head_dim) for p in plans]


def run(plans: list[LayerPlan], handles: list | None, h: torch.Tensor, head_dim: int, kcs: list, vcs: list,
        slots: torch.Tensor, tables: torch.Tensor, ctx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        block_size: int) -> torch.Tensor:
    """h [B, hidden] through every layer, layer i on pools kcs[i] / vcs[i]: one `decode_stack` call when `handles`
    (from `stack`) are given, else `layer` by layer (measured on int4-g32-s6 at batch 1: the per-layer calls'
    Python and argument conversion cost ~15-20 us a layer, 0.5 ms of a 6.7 ms token)."""
    if handles is not None:
        return kernels.loaded().decode_stack(h, handles, kcs, vcs, slots, tables, ctx, cos, sin, block_size)
    for p, kc, vc in zip(plans, kcs, vcs, strict=True):
        h = layer(p, h, head_dim, kc, vc, slots, tables, ctx, cos, sin, block_size)
    return h


def layer(p: LayerPlan, h: torch.Tensor, head_dim: int, kc: torch.Tensor, vc: torch.Tensor, slots: torch.Tensor,
          tables: torch.Tensor, ctx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, block_size: int) -> torch.Tensor:
    """h [B, hidden] (fp32, one new token per row) -> h after this layer; writes the rows' K/V at `slots`."""
    ops = kernels.loaded()
    if p.whole is not None:  # the whole layer in one call: no torch op between its kernels
        return ops.decode_layer(h, p.n1_w, p.n1_eps, p.n2_w, p.n2_eps, *p.whole, kc, vc, slots, tables, ctx, cos, sin,
                                block_size, p.scale, head_dim)
    B, hs = h.shape
    x = F.rms_norm(h, (hs,), p.n1_w, p.n1_eps)
    if p.qkv is not None:  # one kernel call, one parallel region for q, k and v
        q, k, v = ops.linear_multi(x, *p.qkv)
    else:
        q, k, v = p.q(x), p.k(x), p.v(x)
    o = ops.paged_attention(q.view(B, -1, head_dim), k.view(B, -1, head_dim), v.view(B, -1, head_dim), kc, vc,
                            slots, tables, ctx, cos, sin, block_size, p.scale)
    h = h + p.o(o.to(h.dtype))
    x = F.rms_norm(h, (hs,), p.n2_w, p.n2_eps)
    if p.gate_up is not None:
        g, u = ops.linear_multi(x, *p.gate_up)
    else:
        g, u = p.gate(x), p.up(x)
    return h + p.down(p.act(g) * u)
