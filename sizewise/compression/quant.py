"""Quantization primitives: plain functions on tensors, no modules (gpt-fast's quantize.py shape).

Conventions used everywhere in sizewise.compression:
- int8 weights: symmetric, one scale per output channel, q in [-127, 127], w ~= q * scale.
- int4 weights: asymmetric round-to-nearest per group of `group_size` input columns, unsigned
  q in [0, 15] with an integer zero point zp in [0, 15]: w ~= (q - zp) * scale.
  Integer zero points (not gpt-fast's float "zeros") so the checkpoint matches compressed-tensors'
  `weight_zero_point`; the CPU kernel's float zero is derived from it at load time.
- Scales are rounded *up* to their storage dtype (bf16) before quantizing, so the stored scale is the
  one the integers were computed against, the grid still spans [min, max], and |w - dequant| <= scale/2
  holds (up to fp32 rounding).
"""
from __future__ import annotations

import torch

SCALE_DTYPE = torch.bfloat16  # what the CPU kernels consume; 2 bytes like fp16 for size arithmetic
EPS = 1e-8


def round_up_scale(s: torch.Tensor) -> torch.Tensor:
    """fp32 positive scales -> SCALE_DTYPE, never smaller than the input (so no value clips)."""
    r = s.to(SCALE_DTYPE)
    low = r.float() < s
    if low.any():  # next representable value up: positive floats order like their bit patterns
        r = torch.where(low, (r.view(torch.int16) + 1).view(SCALE_DTYPE), r)
    return r


def quantize_per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q int8 [N, K], scale [N] in SCALE_DTYPE); symmetric, absmax / 127."""
    w = w.float()
    scale = round_up_scale((w.abs().amax(dim=1) / 127.0).clamp(min=EPS))
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_per_channel_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quantization: x [M, K] -> (q int8, scale [M, 1] fp32); one scale per row."""
    x = x.float()
    scale = (x.abs().amax(dim=-1, keepdim=True) / 127.0).clamp(min=EPS)
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


def _check_group(k: int, group_size: int) -> None:
    if group_size <= 0 or k % group_size != 0:
        raise ValueError(f"group size {group_size} does not divide input dim {k}")


def group_qparams_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max params per group: w [N, K] -> (scale [N, K/g] SCALE_DTYPE, zp int32 [N, K/g])."""
    n, k = w.shape
    _check_group(k, group_size)
    g = w.float().reshape(n, k // group_size, group_size)
    lo = g.amin(dim=-1).clamp(max=0.0)  # include 0 so it is exactly representable
    hi = g.amax(dim=-1).clamp(min=0.0)
    scale = round_up_scale(((hi - lo) / 15.0).clamp(min=EPS))
    zp = torch.round(-lo / scale.float()).clamp(0, 15).to(torch.int32)
    return scale, zp


def quantize_int4_with(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, group_size: int) -> torch.Tensor:
    """Round w [N, K] onto given per-group params -> q int32 [N, K] in [0, 15]."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    q = torch.round(g / scale.float()[..., None]) + zp[..., None].float()
    return q.clamp(0, 15).to(torch.int32).reshape(n, k)


def group_quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN: w [N, K] -> (q int32 [N, K] in [0,15], scales [N, K/g], zeros int32 [N, K/g])."""
    scale, zp = group_qparams_int4(w, group_size)
    return quantize_int4_with(w, scale, zp, group_size), scale, zp


def group_dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    g = (q.reshape(n, k // group_size, group_size).float() - zp[..., None].float()) * scale.float()[..., None]
    return g.reshape(n, k)


# --- nibble packing (compressed-tensors "pack-quantized": 8 values per int32, lowest nibble first) ---

def pack_int4_to_int32(q: torch.Tensor) -> torch.Tensor:
    """q [R, C] values in [0, 15] -> int32 [R, C/8]; element j sits in bits 4*(j%8)."""
    r, c = q.shape
    if c % 8:
        raise ValueError(f"cannot pack {c} int4 columns into int32 (need a multiple of 8)")
    q = q.to(torch.int64).reshape(r, c // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    packed = (q << shifts).sum(dim=-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # reinterpret as signed int32
    return packed.to(torch.int32)


def unpack_int32_to_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of pack_int4_to_int32 -> int32 [R, cols] in [0, 15]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    q = (packed[..., None] >> shifts) & 0xF
    return q.reshape(packed.shape[0], -1)[:, :cols].to(torch.int32)
