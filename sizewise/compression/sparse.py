"""Packed sparse Linear: pruned weights stored so the bytes on disk really shrink.

Two layouts, each with fp16, int8 or int4 values:
- N:M ('nm'): per row, the kept values in column order [out, in*N/M] plus, per group of M, the
  rank of its kept-position set among the C(M, N) possible ones (combinatorial number system),
  ceil(log2 C(M, N)) bits, bit-packed: 3 bits per 2:4 group (0.75 bit/weight, where 2-bit
  positions per kept value would take 1), 7 bits per 4:8 group (0.875 where 3-bit positions take 1.5).
- unstructured ('bitmask'): one bit per weight (row-major, bit-packed) plus the kept values in
  row-major order, like compressed-tensors' bitmask compressor.
Value formats: fp16; int8 symmetric per output channel (bf16 scale); int4 asymmetric per group of
`group_size` *original* input columns (bf16 scale + 4-bit zero point), the core's int4 convention,
so SparseGPT's joint int4 grid is stored as is.

What runs at inference, honestly: the weight is unpacked once at load into a dense matrix
(fp32, or int8/int4 codes for the core's CPU kernels) and multiplied densely. Nothing here makes a
pruned model faster on this CPU; `use_csr()` switches to torch.sparse CSR, which only pays at
high unstructured sparsity (see benchmarks/bench_sparsity.py). `kernel` says which path runs.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sizewise.compression import quant as Q
from sizewise.compression.packed import (Int4WeightOnlyLinear, Int8WeightOnlyLinear, PackedLinear,
                                         int4_supported, register_scheme)

VALUE_FORMATS = ("fp16", "int8", "int4")


# ---------------------------------------------------------------- bit packing

def pack_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative ints < 2**bits -> uint8 stream, least significant bit first."""
    if 8 % bits == 0:
        flat = x.reshape(-1).to(torch.uint8)  # 1, 2, 4 bits: whole values per byte, no bit expansion
        per = 8 // bits
        pad = (-flat.numel()) % per
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        shifts = (torch.arange(per, dtype=torch.uint8) * bits)
        return (flat.reshape(-1, per) << shifts).sum(1, dtype=torch.uint8)
    wide = x.reshape(-1).to(torch.int64)  # any width up to 62 bits (N:M pattern ranks)
    b = ((wide[:, None] >> torch.arange(bits)) & 1).to(torch.uint8).reshape(-1)
    pad = (-b.numel()) % 8
    if pad:
        b = torch.cat([b, b.new_zeros(pad)])
    return (b.reshape(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_bits: the first `count` ints (int64)."""
    p = packed.reshape(-1).to(torch.uint8)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8) * bits
        vals = (p[:, None] >> shifts) & ((1 << bits) - 1)
        return vals.reshape(-1)[:count].to(torch.int64)
    b = ((p[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    b = b[:count * bits].reshape(count, bits).to(torch.int64)
    return (b << torch.arange(bits)).sum(1)


def int4_group_for(in_features: int, requested: int, fallbacks: tuple[int, ...] = (64, 32)) -> int:
    """The requested int4 group size if it divides the input dim, else the largest fallback that does
    (the core's rule: SmolLM2's 576-wide inputs take g64 when g128 is asked)."""
    for g in (requested, *[f for f in fallbacks if f < requested]):
        if in_features % g == 0:
            return g
    raise ValueError(f"no int4 group size in {(requested, *fallbacks)} divides {in_features}")


def pattern_bits(n: int, m: int) -> int:
    """Bits per group of M to name which N positions are kept."""
    return max(1, math.ceil(math.log2(math.comb(m, n))))


def _comb_table(m: int, n: int) -> torch.Tensor:
    """[m, n+1] int64 table of C(p, k) (0 when p < k)."""
    return torch.tensor([[math.comb(p, k) for k in range(n + 1)] for p in range(m)], dtype=torch.int64)


def nm_rank(pos: torch.Tensor, m: int) -> torch.Tensor:
    """Ascending kept positions [..., n] -> colex rank sum_i C(p_i, i+1) in [0, C(m, n))."""
    n = pos.shape[-1]
    table = _comb_table(m, n)
    return sum(table[pos[..., i], i + 1] for i in range(n))


def nm_unrank(rank: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Inverse of nm_rank: greedy from the largest position, [...] -> [..., n] ascending."""
    table = _comb_table(m, n)
    r = rank.clone()
    out = torch.empty(*rank.shape, n, dtype=torch.int64)
    for i in range(n - 1, -1, -1):
        col = table[:, i + 1].contiguous()  # non-decreasing in p
        p = torch.searchsorted(col, r, right=True) - 1  # largest p with C(p, i+1) <= r
        out[..., i] = p
        r = r - col[p]
    return out


# ---------------------------------------------------------------- mask <-> layout

def nm_positions(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[out, in] N:M mask -> positions of kept weights inside each group [out, in/m, n] (ascending)."""
    rows, cols = mask.shape
    g = mask.reshape(rows, cols // m, m)
    if not bool((g.sum(-1, dtype=torch.int32) == n).all()):
        raise ValueError(f"mask is not {n}:{m}: every group of {m} columns must keep exactly {n}")
    pos = torch.arange(m, dtype=torch.uint8).expand(rows, cols // m, m)
    return pos[g].reshape(rows, cols // m, n).to(torch.int64)  # boolean indexing keeps row-major order


def nm_mask_from_positions(pos: torch.Tensor, rows: int, cols: int, m: int) -> torch.Tensor:
    g = torch.zeros(rows, cols // m, m, dtype=torch.bool)
    return g.scatter_(-1, pos, True).reshape(rows, cols)


def kept_values(w: torch.Tensor, mask: torch.Tensor, layout: str, n: int = 0, m: int = 0) -> torch.Tensor:
    """The kept entries in storage order (row-major over kept positions, both layouts)."""
    if layout == "nm":
        return w[mask].reshape(w.shape[0], -1)
    return w[mask]


# ---------------------------------------------------------------- the module

class SparseLinear(PackedLinear):
    """A pruned Linear in packed storage; forward runs a dense matmul on the weight unpacked at load."""

    def __init__(self, mask: torch.Tensor, layout: str, values_format: str, n: int = 0, m: int = 0,
                 group_size: int = 128, codes: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 zero: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> None:
        """Give `weight` (fp16 values) or `codes`+`scale` (+`zero` for int4), dense [out, in] with
        masked positions holding the code of 0."""
        out_f, in_f = mask.shape
        super().__init__(in_f, out_f, bias)
        if layout not in ("nm", "bitmask"):
            raise ValueError(f"unknown sparse layout {layout!r}")
        if values_format not in VALUE_FORMATS:
            raise ValueError(f"unknown value format {values_format!r}")
        self.layout, self.values_format, self.n, self.m = layout, values_format, n, m
        self.group_size = group_size
        self.register_buffer("mask", mask.to(torch.bool).contiguous(), persistent=False)
        if layout == "nm":
            nm_positions(self.mask, n, m)  # validates the structure
        self._csr: torch.Tensor | None = None
        self._int_kernel: PackedLinear | None = None
        if values_format == "fp16":
            w = weight.detach().to(torch.float16) * self.mask
            self.register_buffer("values", kept_values(w, self.mask, layout).contiguous())
            self.register_buffer("_dense", w.float(), persistent=False)
        else:
            self.register_buffer("values", kept_values(codes, self.mask, layout).contiguous())
            self.register_buffer("scale", scale.to(Q.SCALE_DTYPE).contiguous())
            if values_format == "int4":
                self.register_buffer("zero", zero.to(torch.int32).contiguous())
            self._build_int_kernel(codes)

    # -- construction --------------------------------------------------------

    @classmethod
    def from_float(cls, linear: nn.Linear, mask: torch.Tensor | None = None, values_format: str = "fp16",
                   n: int = 0, m: int = 0, group_size: int = 128, quant: dict | None = None,
                   **options: Any) -> "SparseLinear":
        """Pack a pruned Linear. `mask` defaults to weight != 0. `quant` = SparseGPT's joint int4
        params ({'scales', 'zeros', 'group_size'}): stored as given instead of re-deriving a grid."""
        w = linear.weight.detach().float()
        mask = (w != 0) if mask is None else mask.to(torch.bool)
        layout = "nm" if m else "bitmask"
        wm = w * mask
        if values_format == "fp16":
            return cls(mask, layout, "fp16", n, m, group_size, weight=wm, bias=linear.bias)
        if values_format == "int8":
            codes, scale = Q.quantize_per_channel_int8(wm)
            return cls(mask, layout, "int8", n, m, group_size, codes=codes, scale=scale, bias=linear.bias)
        if quant is not None:
            group_size = int(quant["group_size"])
            scale, zero = quant["scales"], quant["zeros"].to(torch.int32)
        else:
            scale, zero = Q.group_qparams_int4(wm, group_size)
        codes = Q.quantize_int4_with(wm, scale, zero, group_size)
        codes = torch.where(mask, codes, zero.repeat_interleave(group_size, dim=1))  # exact 0 where pruned
        return cls(mask, layout, "int4", n, m, group_size, codes=codes, scale=scale, zero=zero, bias=linear.bias)

    # -- identity ------------------------------------------------------------

    @property
    def scheme(self) -> str:  # type: ignore[override]
        vf = f"int4-g{self.group_size}" if self.values_format == "int4" else self.values_format
        return f"sparse-{self.layout}-{vf}"

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.layout == "nm" else "unstructured"

    @property
    def kernel(self) -> str:  # type: ignore[override]
        if self._csr is not None:
            return "torch.sparse CSR matmul (fp32)"
        if self._int_kernel is not None:
            return f"{self._int_kernel.kernel} on codes unpacked at load (no sparse speedup on CPU)"
        return "dense F.linear on weight unpacked at load (no sparse speedup on CPU)"

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.mask.sum()) / self.mask.numel()

    # -- inference -----------------------------------------------------------

    def _dense_codes(self, codes_fill: torch.Tensor) -> torch.Tensor:
        """Scatter stored values back to a dense [out, in] tensor, `codes_fill` where pruned."""
        dense = codes_fill.clone()
        dense[self.mask] = self.values.reshape(-1).to(dense.dtype)
        return dense

    def _build_int_kernel(self, codes: torch.Tensor) -> None:
        # kept out of _modules: its kernel-layout buffers are derived state, never saved
        if self.values_format == "int8":
            object.__setattr__(self, "_int_kernel", Int8WeightOnlyLinear(codes.to(torch.int8), self.scale, None))
        elif int4_supported(self.out_features, self.in_features, self.group_size) is None:
            object.__setattr__(self, "_int_kernel",
                               Int4WeightOnlyLinear(codes.to(torch.int32), self.scale, self.zero, self.group_size, None))
        else:
            self.register_buffer("_dense", self._dequant(codes), persistent=False)

    def _dequant(self, codes: torch.Tensor) -> torch.Tensor:
        if self.values_format == "int8":
            return Q.dequantize_per_channel_int8(codes.to(torch.int8), self.scale)
        return Q.group_dequantize_int4(codes.to(torch.int32), self.scale, self.zero, self.group_size)

    def dense_codes(self) -> torch.Tensor:
        """int8/int4: the dense code matrix (pruned positions hold the code of 0)."""
        if self.values_format == "int8":
            return self._dense_codes(torch.zeros(self.out_features, self.in_features, dtype=torch.int8))
        fill = self.zero.repeat_interleave(self.group_size, dim=1)
        return self._dense_codes(fill.to(torch.int32))

    def dequantized_weight(self) -> torch.Tensor:
        if self.values_format == "fp16":
            return self._dense.clone()
        return self._dequant(self.dense_codes()) * self.mask

    def use_csr(self, on: bool = True) -> "SparseLinear":
        """Run torch.sparse CSR matmul instead of the dense path (for speed measurements)."""
        self._csr = self.dequantized_weight().to_sparse_csr() if on else None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._csr is not None:
            xf = x.reshape(-1, self.in_features).float()
            y = torch.sparse.mm(self._csr, xf.t()).t()
            return self._finish(y, x.dtype).reshape(*x.shape[:-1], self.out_features)
        if self._int_kernel is not None:
            return self._finish(self._int_kernel(x), x.dtype)
        return F.linear(x, self._dense.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    # -- storage -------------------------------------------------------------

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.layout == "nm":
            pos = nm_positions(self.mask, self.n, self.m)
            out["pattern"] = pack_bits(nm_rank(pos, self.m), pattern_bits(self.n, self.m))
        else:
            out["bitmask"] = pack_bits(self.mask, 1)
        if self.values_format == "int4":
            out["values"] = pack_bits(self.values, 4)
            out["values_scale"] = self.scale
            out["values_zero_point"] = pack_bits(self.zero, 4)
        else:
            out["values"] = self.values
            if self.values_format == "int8":
                out["values_scale"] = self.scale
        return out

    def packed_meta(self) -> dict:
        meta = {**super().packed_meta(), "layout": self.layout, "values_format": self.values_format,
                "nnz": int(self.mask.sum())}
        if self.layout == "nm":
            meta.update(n=self.n, m=self.m, pattern_bits=pattern_bits(self.n, self.m),
                        pattern_encoding="colex rank of the kept-position set per group of m")
        if self.values_format == "int4":
            meta["group_size"] = self.group_size
        return meta

    @classmethod
    def from_packed(cls, tensors: dict[str, torch.Tensor], meta: dict, bias: torch.Tensor | None) -> "SparseLinear":
        rows, cols = int(meta["out_features"]), int(meta["in_features"])
        layout, vf = meta["layout"], meta["values_format"]
        n, m = int(meta.get("n", 0)), int(meta.get("m", 0))
        g = int(meta.get("group_size", 128))
        if layout == "nm":
            ranks = unpack_bits(tensors["pattern"], pattern_bits(n, m), rows * (cols // m))
            if int(ranks.max()) >= math.comb(m, n):
                raise ValueError(f"corrupt {n}:{m} pattern data: rank >= C({m}, {n})")
            pos = nm_unrank(ranks.reshape(rows, cols // m), n, m)
            mask = nm_mask_from_positions(pos, rows, cols, m)
        else:
            mask = unpack_bits(tensors["bitmask"], 1, rows * cols).reshape(rows, cols).to(torch.bool)
        nnz = int(mask.sum())
        if vf == "fp16":
            w = torch.zeros(rows, cols, dtype=torch.float16)
            w[mask] = tensors["values"].reshape(-1).to(torch.float16)
            return cls(mask, layout, vf, n, m, g, weight=w, bias=bias)
        if vf == "int8":
            codes = torch.zeros(rows, cols, dtype=torch.int8)
            codes[mask] = tensors["values"].reshape(-1)
            return cls(mask, layout, vf, n, m, g, codes=codes, scale=tensors["values_scale"], bias=bias)
        zero = unpack_bits(tensors["values_zero_point"], 4, rows * (cols // g)).reshape(rows, cols // g)
        codes = zero.repeat_interleave(g, dim=1).to(torch.int32)
        codes[mask] = unpack_bits(tensors["values"], 4, nnz).to(torch.int32)
        return cls(mask, layout, vf, n, m, g, codes=codes, scale=tensors["values_scale"], zero=zero, bias=bias)


def packed_nbytes(module: PackedLinear) -> int:
    """Bytes the module's packed tensors take on disk (bias excluded)."""
    return sum(t.numel() * t.element_size() for t in module.packed_tensors().values())


def expected_nbytes(rows: int, cols: int, nnz: int, layout: str, values_format: str,
                    n: int = 0, m: int = 0, group_size: int = 128) -> int:
    """The storage formula, written independently of the packing code (tests compare the two)."""
    idx = math.ceil(rows * (cols // m) * pattern_bits(n, m) / 8) if layout == "nm" else math.ceil(rows * cols / 8)
    if values_format == "fp16":
        vals = 2 * nnz
    elif values_format == "int8":
        vals = nnz + 2 * rows
    else:
        groups = rows * (cols // group_size)
        vals = math.ceil(nnz / 2) + 2 * groups + math.ceil(groups / 2)
    return idx + vals


for _layout in ("nm", "bitmask"):
    for _vf in ("fp16", "int8", *(f"int4-g{g}" for g in (32, 64, 128, 256))):
        register_scheme(f"sparse-{_layout}-{_vf}", SparseLinear)
