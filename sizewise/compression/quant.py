"""Quantization primitives: plain functions on tensors, no modules (gpt-fast's quantize.py shape).

Conventions used everywhere in sizewise.compression:
- int8 weights: symmetric, one scale per output channel, q in [-127, 127], w ~= q * scale.
- int4 weights with an integer zero point (`zero="int"`, the int4-ct-* recipes): asymmetric
  round-to-nearest per group of `group_size` input columns, unsigned q in [0, 15], zp in [0, 15]:
  w ~= (q - zp) * scale, so the checkpoint matches compressed-tensors' `weight_zero_point` (what vLLM
  loads); the CPU kernel's float zero is derived from it at load time.
- int4 weights with a *float* zero (the recipes' default, `zero="float"`): w ~= (q - 8) * scale + zero
  with scale and zero both bf16, which is exactly what aten's int4 CPU kernel consumes (gpt-fast's and
  HQQ's convention; GGUF Q4_1 stores a float minimum the same way). An integer zero point can only put
  the grid's minimum on a multiple of the scale, so it cannot reproduce a grid like Q4_1's; the float
  zero can, and is free at run time. Its grid (scale, zero) is chosen per group by `fit_int4_float`:
  min/max, or a (weighted) least-squares fit of the rounded values to the weights.
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


# --- int4 with a float zero: w ~= (q - 8) * scale + zero ---

# alternating least-squares rounds. Bundled model, three g64 layers: squared error 526 (min/max), 421
# after 4 rounds, 416 after 6, 415.3 after 8, 415.2 after 12
FIT_ITERS = 4  # least-squares rounds per start
FIT_STARTS = ((1.0, 0.0), (1.0, -0.25), (1.0, 0.25))  # (scale factor, zero shift in steps) of the min/max grid
FIT_CHUNK = 1 << 19  # elements per pass: the fit's temporaries stay in cache (6x faster than whole matrices)


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(SCALE_DTYPE).float()


def _column_weights(importance: torch.Tensor | None, k: int, group_size: int) -> torch.Tensor:
    """[1, K/g, g] weights of each input column's squared error: 1 without statistics, else the
    importance normalised to mean 1 (plus a floor, so no column is ignored)."""
    if importance is None:
        return torch.ones(1, k // group_size, group_size)
    imp = importance.float().clamp(min=0)
    return (imp / imp.mean().clamp(min=EPS) + 1e-3).reshape(1, k // group_size, group_size)


def fit_int4_float(w: torch.Tensor, group_size: int, importance: torch.Tensor | None = None,
                   iters: int = FIT_ITERS, starts: tuple[tuple[float, float], ...] = FIT_STARTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (scale, zero) in SCALE_DTYPE for w [N, K]: the min/max grid, then `iters` rounds of
    least squares (round onto the grid, refit scale and zero to the rounded values, keep the best),
    from each of `starts`: the min/max grid with its scale multiplied and its zero shifted by so many steps.

    Rounding makes the error piecewise, so one start stops in a local optimum: on the bundled Q4_1
    parent three starts give int4-g64 12 % less weight error and 14 % less KLD than one start, for
    1.3x the fit time, and a 165-start search only 4 % less error again and the same KLD
    (benchmarks/bench_int4_grid.py): the data-free grid is at its limit there.

    `importance` [K] weights the squared error per input column; the mean of x^2 over calibration
    activations makes it the error of the layer's output rather than of its weights (the diagonal of
    GPTQ's Hessian; llama.cpp's importance matrix). The error is measured with the stored (bf16)
    parameters, so the grid chosen is the grid the kernel runs. Never worse than min/max."""
    n, k = w.shape
    _check_group(k, group_size)
    rows = max(1, FIT_CHUNK // k)
    if n > rows:  # rows are independent
        parts = [fit_int4_float(w[r:r + rows], group_size, importance, iters, starts) for r in range(0, n, rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    G = w.float().reshape(n, k // group_size, group_size)
    W = _column_weights(importance, k, group_size)
    lo, hi = G.amin(-1, keepdim=True), G.amax(-1, keepdim=True)
    s0 = round_up_scale(((hi - lo) / 15.0).clamp(min=EPS)).float()
    sw = W.sum(-1, keepdim=True)
    best: list[torch.Tensor] = []  # best scale, zero, error so far
    for f, off in (starts if iters else starts[:1]):  # the first start is min/max itself
        s = s0 * f
        z = lo + (8 + off) * s
        for it in range(iters + 1):
            sb, zb = _bf16(s).clamp(min=EPS), _bf16(z)
            qc = (torch.round((G - zb) / sb) + 8).clamp(0, 15) - 8  # centred codes
            e = (W * ((qc * sb + zb - G) ** 2)).sum(-1, keepdim=True)
            if not best:
                best = [sb, zb, e]
            else:
                better = e < best[2]
                best = [torch.where(better, a, b) for a, b in zip((sb, zb, e), best)]
            if it == iters:
                break
            # weighted least squares for (s, z) in  qc * s + z ~= G
            sq, sqq = (W * qc).sum(-1, keepdim=True), (W * qc * qc).sum(-1, keepdim=True)
            sg, sqg = (W * G).sum(-1, keepdim=True), (W * qc * G).sum(-1, keepdim=True)
            det = sw * sqq - sq * sq
            ok = det > EPS * sw * sw
            s_new = torch.where(ok, (sw * sqg - sq * sg) / torch.where(ok, det, torch.ones_like(det)), sb)
            s = torch.where(s_new > EPS, s_new, sb)
            z = torch.where(ok, (sg - s * sq) / sw, zb)
    return best[0][..., 0].to(SCALE_DTYPE), best[1][..., 0].to(SCALE_DTYPE)


def quantize_int4_float_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """Round w [N, K] onto per-group (scale, float zero) -> q int32 [N, K] in [0, 15]."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    q = torch.round((g - zero.float()[..., None]) / scale.float()[..., None]) + 8
    return q.clamp(0, 15).to(torch.int32).reshape(n, k)


def dequantize_int4_float(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    g = (q.reshape(n, k // group_size, group_size).float() - 8) * scale.float()[..., None] + zero.float()[..., None]
    return g.reshape(n, k)


def int4_grid(w: torch.Tensor, group_size: int, zero: str = "float", grid: str = "mse",
              importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (scale, zero) by a recipe's rules: int32 zero points for zero="int" (min/max grid,
    compressed-tensors layout) or bf16 float zeros for zero="float" (grid "minmax", "mse", or "act-mse"
    weighted by `importance`). RTN and GPTQ both take their groups' grids from here."""
    if zero == "int":
        if grid != "minmax":
            raise ValueError("an integer zero point takes the min/max grid only")
        return group_qparams_int4(w, group_size)
    iters = 0 if grid == "minmax" else FIT_ITERS
    return fit_int4_float(w, group_size, importance if grid == "act-mse" else None, iters)


def quantize_int4(w: torch.Tensor, group_size: int, zero: str = "float", grid: str = "mse",
                  importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 on `int4_grid`'s grid -> (q, scale, zero)."""
    scale, z = int4_grid(w, group_size, zero, grid, importance)
    rnd = quantize_int4_with if zero == "int" else quantize_int4_float_with
    return rnd(w, scale, z, group_size), scale, z


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """Either convention, told apart by the zero's dtype (integer zero point or float zero)."""
    if zero.is_floating_point():
        return dequantize_int4_float(q, scale, zero, group_size)
    return group_dequantize_int4(q, scale, zero.to(torch.int32), group_size)


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


# --- byte packing (compressed-tensors "pack-quantized" with num_bits 8: W8A16 as vLLM's WNA16 reads it) ---

def pack_int8_to_int32(q: torch.Tensor) -> torch.Tensor:
    """int8 q [R, C] -> int32 [R, C/4]: each value offset by 128 to 0..255, element j in bits 8*(j%4)."""
    r, c = q.shape
    if c % 4:
        raise ValueError(f"cannot pack {c} int8 columns into int32 (need a multiple of 4)")
    u = (q.to(torch.int64) + 128).reshape(r, c // 4, 4)
    packed = (u << torch.arange(0, 32, 8, dtype=torch.int64)).sum(dim=-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # reinterpret as signed int32
    return packed.to(torch.int32)


def unpack_int32_to_int8(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of pack_int8_to_int32 -> int8 [R, cols]."""
    u = (packed[..., None] >> torch.arange(0, 32, 8, dtype=torch.int32)) & 0xFF
    return (u.reshape(packed.shape[0], -1)[:, :cols] - 128).to(torch.int8)


# --- int4 with 6-bit group scales and zeros in row super-blocks (the idea of llama.cpp's Q4_K) ---
#
# A g32 grid costs 4 + 32/32 = 5 bits per weight with a bf16 scale and zero per group. Storing each group's
# scale and zero as 6-bit codes against a few fp16 numbers per super-block of groups (scale = a * cs,
# zero = b + e * cz) costs 4 + 12/32 + 48/(32 S) bits: 4.46 for S = 18 groups (a 576-wide row), 4.47 for
# S = 16. The kernel still gets a bf16 (scale, zero) per group of 32: the codes are expanded once at load.

from sizewise.size.formats import superblock_groups  # noqa: E402  (pure Python, shared with `estimate`)

SB_CODE_MAX = 63  # 6-bit codes
SB_SEARCH = (-1, 0, 1)  # code offsets tried around the nearest codes, per group


def sb_expand(cs: torch.Tensor, cz: torch.Tensor, sup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, G] (0..63) and super-block params [N, nS, 3] (fp16) -> the kernel's bf16 (scale, zero)
    [N, G]: scale = a * cs, zero = b + e * cz, computed in fp32 and rounded once to bf16."""
    n, g = cs.shape
    per = g // sup.shape[1]
    p = sup.float().repeat_interleave(per, dim=1)  # [N, G, 3]
    scale = p[..., 0] * cs.float()
    zero = p[..., 1] + p[..., 2] * cz.float()
    return scale.to(SCALE_DTYPE), zero.to(SCALE_DTYPE)


def fit_int4_sb(w: torch.Tensor, group_size: int = 32, importance: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4 weights w [N, K] with super-block coded scales -> (q int32 [N, K], cs uint8 [N, G], cz uint8 [N, G],
    sup fp16 [N, nS, 3]).

    1. each group's float grid as `fit_int4_float` fits it (weighted by `importance` if given);
    2. per super-block: a = max(scale) / 63, b = min(zero), e = (max(zero) - min(zero)) / 63, in fp16;
    3. per group, the nearest codes and their neighbours (3 x 3 pairs) are tried, each with its weights
       re-rounded onto the coded grid, and the pair with the least (weighted) squared error is kept.
    The error is measured with the bf16 values the kernel will run."""
    n, k = w.shape
    _check_group(k, group_size)
    rows = max(1, FIT_CHUNK // k)
    if n > rows:
        parts = [fit_int4_sb(w[r:r + rows], group_size, importance) for r in range(0, n, rows)]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]
    g = k // group_size
    per = superblock_groups(g)
    s0, z0 = fit_int4_float(w, group_size, importance)
    s0, z0 = s0.float(), z0.float()
    sS, zS = s0.reshape(n, g // per, per), z0.reshape(n, g // per, per)
    a = (sS.amax(-1) / SB_CODE_MAX).clamp(min=EPS).half().float()
    b = zS.amin(-1).half().float()
    e = ((zS.amax(-1) - b) / SB_CODE_MAX).clamp(min=EPS).half().float()
    # fp16 rounding of b may leave the smallest zero just below b: codes clamp at 0, the search copes
    sup = torch.stack([a, b, e], dim=-1).half()  # [N, nS, 3]
    ar, br, er = (x.repeat_interleave(per, dim=1) for x in (a, b, e))  # [N, G]
    cs0 = torch.round(s0 / ar).clamp(1, SB_CODE_MAX)
    cz0 = torch.round((z0 - br) / er).clamp(0, SB_CODE_MAX)
    G = w.float().reshape(n, g, group_size)
    W = _column_weights(importance, k, group_size)
    best_err = best_cs = best_cz = None
    for ds in SB_SEARCH:
        cs = (cs0 + ds).clamp(1, SB_CODE_MAX)
        sb = _bf16(ar * cs)[..., None]
        for dz in SB_SEARCH:
            cz = (cz0 + dz).clamp(0, SB_CODE_MAX)
            zb = _bf16(br + er * cz)[..., None]
            qc = (torch.round((G - zb) / sb) + 8).clamp(0, 15) - 8
            err = (W * (qc * sb + zb - G) ** 2).sum(-1)
            if best_err is None:
                best_err, best_cs, best_cz = err, cs, cz
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_cs, best_cz = torch.where(better, cs, best_cs), torch.where(better, cz, best_cz)
    cs, cz = best_cs.to(torch.uint8), best_cz.to(torch.uint8)
    scale, zero = sb_expand(cs, cz, sup)
    q = quantize_int4_float_with(w, scale, zero, group_size)
    return q, cs, cz, sup


def pack_6bit(c: torch.Tensor) -> torch.Tensor:
    """uint8 codes [R, C] in [0, 63] -> uint8 [R, ceil(C/4) * 3]: four codes in three bytes, little-endian
    (code j of a quad in bits 6j..6j+5 of the 24-bit word)."""
    r, cols = c.shape
    pad = (-cols) % 4
    x = torch.nn.functional.pad(c.to(torch.int32), (0, pad)).reshape(r, -1, 4)
    word = x[..., 0] | (x[..., 1] << 6) | (x[..., 2] << 12) | (x[..., 3] << 18)  # 24 bits
    out = torch.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], dim=-1)
    return out.reshape(r, -1).to(torch.uint8)


def unpack_6bit(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of pack_6bit -> uint8 [R, cols]."""
    r = packed.shape[0]
    b = packed.to(torch.int32).reshape(r, -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    x = torch.stack([(word >> (6 * j)) & 0x3F for j in range(4)], dim=-1)
    return x.reshape(r, -1)[:, :cols].to(torch.uint8)
