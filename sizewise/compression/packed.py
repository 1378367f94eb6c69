"""Packed low-bit Linear modules: one small nn.Module per storage format, each on a real CPU kernel.

The interface every packed module implements (the pruning engineer's sparse modules too), so that
checkpoint save/load stays generic:

    scheme: str                      e.g. "int4-g128-asym"; the manifest key that finds the class again
    kernel: str                      the op that runs the matmul, e.g. "aten._weight_int4pack_mm_for_cpu(bf16)"
    in_features, out_features, bias  like nn.Linear (bias is a float Parameter or None, saved as `<name>.bias`)
    from_float(linear, **options)    classmethod: quantize an nn.Linear
    packed_tensors() -> {suffix: Tensor}   what goes into safetensors as `<module>.<suffix>`
    packed_meta() -> dict            JSON-able facts needed to rebuild (group size, shapes...)
    from_packed(tensors, meta, bias) classmethod: rebuild from exactly what packed_tensors/meta gave
    dequantized_weight() -> Tensor   fp32 [out, in] reference (tests and error analysis only, never forward)

`register_scheme(name, cls)` / `scheme_class(name)` map scheme strings to classes.

Activations: the int8/int4 weight-only kernels are fast with bf16 activations and fall to scalar
paths with fp32, so modules cast the input to bf16 around the kernel and cast the result back.
`act_dtype` can be set to torch.float32 to measure the other path; `kernel` says which ran.
int4 modules run sizewise's own kernel (sizewise/kernels) where it is built: the same bf16 activations,
the exact stored weights, fp32 sums and output; aten's int4 kernel otherwise.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import torch
import torch.nn as nn

from sizewise import kernels
from sizewise.compression import quant as Q

# --- registry ---

_SCHEMES: dict[str, type["PackedLinear"]] = {}


def register_scheme(name: str, cls: type["PackedLinear"]) -> None:
    """Make `name` (as written in sizewise.json) loadable by `cls.from_packed`."""
    _SCHEMES[name] = cls


def scheme_class(name: str) -> type["PackedLinear"]:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown packed scheme {name!r}; known: {', '.join(sorted(_SCHEMES))}") from None


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def is_packed(mod: nn.Module) -> bool:
    """Any module with the packed interface (PackedLinear and the sparse/shared modules alike)."""
    return hasattr(mod, "scheme") and hasattr(mod, "kernel") and hasattr(mod, "packed_tensors")


def count_params(model: nn.Module) -> int:
    """The parameters a (partly) packed model stands for: float parameters outside packed modules (tied
    ones once), plus each packed module's [out, in] weight and bias; a head that reads the embedding's
    own table (`tied_to`) adds nothing. `model.parameters()` alone misses every packed weight."""
    total, inside, seen = 0, set(), set()
    for m in model.modules():
        if is_packed(m) and id(m) not in inside and hasattr(m, "in_features"):
            inside.update(id(x) for x in m.modules())
            if not getattr(m, "tied_to", None):
                total += m.out_features * m.in_features + (0 if getattr(m, "bias", None) is None else m.bias.numel())
    for m in model.modules():
        if id(m) in inside:
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


# --- base ---

class PackedLinear(nn.Module):
    """Common state of a packed Linear: shapes, bias, scheme/kernel strings."""

    scheme: str = ""
    kernel: str = ""
    weight_keys: ClassVar[tuple[str, ...]] = ()  # packed_tensors() suffixes, for docs/size accounting

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.act_dtype = torch.bfloat16

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> "PackedLinear":
        raise NotImplementedError

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def packed_meta(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_packed(cls, tensors: dict[str, torch.Tensor], meta: dict, bias: torch.Tensor | None) -> "PackedLinear":
        raise NotImplementedError

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _finish(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        y = y.to(dtype)
        return y if self.bias is None else y + self.bias.to(dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scheme={self.scheme}, kernel={self.kernel}"


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


# --- int8 weight-only: aten._weight_int8pack_mm ---

def aligned(q: torch.Tensor) -> torch.Tensor:
    """q contiguous and 64-byte aligned: _weight_int8pack_mm segfaults on unaligned weights (safetensors views)."""
    q = q.contiguous()
    return q.clone() if q.data_ptr() % 64 else q


class Int8WeightOnlyLinear(PackedLinear):
    """int8 per-output-channel symmetric weights; activations stay float (bf16 in the kernel)."""

    scheme = "int8-wo"
    weight_keys = ("weight", "weight_scale")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(q.shape[1], q.shape[0], bias)
        self.register_buffer("weight", aligned(q))  # int8 [N, K]
        self.register_buffer("weight_scale", scale.to(Q.SCALE_DTYPE).reshape(-1))  # [N]

    @property
    def kernel(self) -> str:  # type: ignore[override]
        return f"aten._weight_int8pack_mm({_dt(self.act_dtype)})"

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> "Int8WeightOnlyLinear":
        q, s = Q.quantize_per_channel_int8(linear.weight.detach())
        return cls(q, s, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = _flat(x).to(self.act_dtype)
        y = torch.ops.aten._weight_int8pack_mm(xs, self.weight, self.weight_scale.to(self.act_dtype))
        return self._finish(y, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return int8_packed_tensors(self.weight, self.weight_scale)

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        return cls(tensors["weight"], tensors["weight_scale"].reshape(-1), bias)

    def dequantized_weight(self) -> torch.Tensor:
        return Q.dequantize_per_channel_int8(self.weight, self.weight_scale)



class Int8PackedWeightOnlyLinear(Int8WeightOnlyLinear):
    """int8-wo with its integers stored the way vLLM's W8A16 path reads them: compressed-tensors
    "pack-quantized" with num_bits 8 (4 bytes per int32, offset 128), because vLLM treats "int-quantized"
    as an activation-quantized format and refuses it without input_activations. Same integers and
    scales as int8-wo, same kernel; only the stored container differs (written by `export --to vllm`)."""

    scheme = "int8-wo-pack"
    weight_keys = ("weight_packed", "weight_scale", "weight_shape")

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        n, k = self.weight.shape
        return {"weight_packed": Q.pack_int8_to_int32(self.weight), "weight_scale": self.weight_scale.reshape(-1, 1),
                "weight_shape": torch.tensor([n, k], dtype=torch.int64)}

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        n, k = (int(v) for v in tensors["weight_shape"])
        q = Q.unpack_int32_to_int8(tensors["weight_packed"], k)
        return cls(q, tensors["weight_scale"].reshape(-1), bias)

# --- W8A8 dynamic per-token: torch._int_mm ---

def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M,K] x int8 [K,N] -> int32. On this torch/CPU build _int_mm accepts every M (checked
    down to M=1 in tests), so no padding; the fallback below only guards other builds: it pads M to 17."""
    try:
        return torch._int_mm(a, b)
    except RuntimeError:
        m = a.shape[0]
        pad = torch.zeros(max(17, m) - m, a.shape[1], dtype=a.dtype)
        return torch._int_mm(torch.cat([a, pad]), b)[:m]


class Int8DynamicLinear(Int8WeightOnlyLinear):
    """W8A8: int8 weights per output channel, activations quantized per token at run time."""

    scheme = "int8-dyn"
    kernel = "torch._int_mm(int8xint8->int32)"  # type: ignore[assignment]

    def __init__(self, q, scale, bias) -> None:
        super().__init__(q, scale, bias)
        self.register_buffer("_wt", self.weight.t().contiguous(), persistent=False)  # [K, N] for _int_mm
        self._ws = self.weight_scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, xs = Q.quantize_per_token_int8(_flat(x))
        y = _int_mm(xq, self._wt).float() * xs * self._ws
        return self._finish(y, x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8StaticLinear(Int8WeightOnlyLinear):
    """W8A8 with calibrated activation scales.

    per-tensor: one input scale s; y = (q(x/s) @ Wq^T) * s * w_scale.
    per-channel: one scale per input channel s_k, folded into the weight before its per-output-channel
    quantization (W'[n,k] = W[n,k] * s_k), so the int8 x int8 product stays exact: y = (q(x/s) @ W'q^T) * w'_scale.
    """

    scheme = "int8-static"
    kernel = "torch._int_mm(int8xint8->int32)"  # type: ignore[assignment]

    def __init__(self, q, scale, input_scale: torch.Tensor, bias) -> None:
        super().__init__(q, scale, bias)
        self.register_buffer("input_scale", input_scale.float().reshape(-1))  # [1] or [K]
        self.register_buffer("_wt", self.weight.t().contiguous(), persistent=False)
        self._ws = self.weight_scale.float()
        self._is = self.input_scale if self.input_scale.numel() > 1 else self.input_scale.reshape(())

    @property
    def strategy(self) -> str:
        return "channel" if self.input_scale.numel() > 1 else "tensor"

    @classmethod
    def from_float(cls, linear: nn.Linear, input_absmax: torch.Tensor | None = None, **options: Any) -> "Int8StaticLinear":
        """input_absmax: calibrated max |x|, a scalar (per-tensor) or [K] (per-channel)."""
        if input_absmax is None:
            raise ValueError("int8-static needs calibrated input_absmax")
        s = (input_absmax.float() / 127.0).clamp(min=Q.EPS)
        w = linear.weight.detach().float()
        if s.numel() > 1:
            w = w * s[None, :]
        q, ws = Q.quantize_per_channel_int8(w)
        return cls(q, ws, s.reshape(-1), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _flat(x).float()
        xq = torch.round(xf / self._is).clamp(-127, 127).to(torch.int8)
        y = _int_mm(xq, self._wt).float() * self._ws
        if self.input_scale.numel() == 1:
            y = y * self._is
        return self._finish(y, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().packed_tensors(), "input_scale": self.input_scale}

    def packed_meta(self) -> dict:
        return {**super().packed_meta(), "input_strategy": self.strategy}

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        return cls(tensors["weight"], tensors["weight_scale"].reshape(-1), tensors["input_scale"], bias)

    def dequantized_weight(self) -> torch.Tensor:
        w = super().dequantized_weight()
        return w / self.input_scale[None, :] if self.input_scale.numel() > 1 else w


# --- int4 group-wise asymmetric: aten._weight_int4pack_mm_for_cpu ---

@lru_cache(maxsize=4)  # int64 per element: keep only a few shapes (a llama has 4 distinct ones)
def _int4pack_perm(n: int, k: int) -> torch.Tensor:
    """Where each nibble of the CPU kernel's packed layout comes from (flat index n*K+k).

    The kernel's layout is an internal, version-specific permutation; we find it by packing the
    base-16 digits of each element's position, so saving never depends on reading kernel sources."""
    pos = torch.arange(n * k, dtype=torch.int64)
    perm = torch.zeros(n * k, dtype=torch.int64)
    digit, shift = 0, 0
    while (n * k - 1) >> shift or digit == 0:
        d = ((pos >> shift) & 0xF).to(torch.int32).reshape(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(d, 1)
        perm |= _nibbles(packed).to(torch.int64) << shift
        digit, shift = digit + 1, shift + 4
    return perm


def _nibbles(packed_u8: torch.Tensor) -> torch.Tensor:
    b = packed_u8.reshape(-1).to(torch.int32)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(-1)


def int4_kernel_pack(q: torch.Tensor) -> torch.Tensor:
    """q int32 [N, K] in [0,15] -> the CPU kernel's uint8 layout."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


def int4_kernel_unpack(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    q = torch.empty(n * k, dtype=torch.int32)
    q[_int4pack_perm(n, k)] = _nibbles(packed)
    return q.reshape(n, k)


def int4_scales_and_zeros(scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """[N, G] scale + int zero point -> the kernel's [G, N, 2] bf16 (scale, float zero).

    The kernel computes (q - 8) * scale + zero, so zero = (8 - zp) * scale gives (q - zp) * scale."""
    s = scale.float()
    z = (8 - zp.float()) * s
    return torch.stack([s, z], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def int4_packed_tensors(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> dict[str, torch.Tensor]:
    """compressed-tensors "pack-quantized" layout: 8 nibbles per int32 along the input dim, zero points
    packed along the output dim ([N/8, G]); the loader converts to the kernel layout in one aten op."""
    n, k = q.shape
    return {
        "weight_packed": Q.pack_int4_to_int32(q),
        "weight_scale": scale.to(Q.SCALE_DTYPE).contiguous(),
        "weight_zero_point": Q.pack_int4_to_int32(zp.t().to(torch.int32)).t().contiguous(),
        "weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }


def int8_packed_tensors(q: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """compressed-tensors "int-quantized": int8 `weight` [N, K], channel `weight_scale` [N, 1]."""
    return {"weight": q.contiguous(), "weight_scale": scale.to(Q.SCALE_DTYPE).reshape(-1, 1)}


def int4_supported(n: int, k: int, group_size: int) -> str | None:
    """Why the CPU int4 kernel cannot take this shape, or None if it can."""
    if n % 16:
        return f"output dim {n} is not a multiple of 16 (CPU int4 kernel)"
    if k % group_size:
        return f"input dim {k} is not a multiple of group size {group_size}"
    return None


def own_int4_kernel(k: int, group_size: int) -> bool:
    """Whether an int4 [*, k] weight at this group size runs sizewise's kernel (built, and the shape suits it)."""
    return kernels.ops() is not None and k % 32 == 0 and group_size % 32 == 0


def int4_kernel_name(own: bool, act: str = "bf16") -> str:
    return f"sizewise.linear_q4({act} activations, fp32 sums)" if own else f"aten._weight_int4pack_mm_for_cpu({act})"


class Int4WeightOnlyLinear(PackedLinear):
    """int4 group-wise asymmetric weights (RTN or GPTQ give the integers; storage and kernel are shared)."""

    weight_keys = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None) -> None:
        self._pack(q, scale, group_size, bias)
        self.register_buffer("weight_zero_point", zp.to(torch.uint8).contiguous())  # [N, K/g] in [0,15]
        self._set_sz(int4_scales_and_zeros(scale, zp))

    def _pack(self, q: torch.Tensor, scale: torch.Tensor, group_size: int, bias: torch.Tensor | None) -> None:
        """State both zero conventions share: shapes, bias, the kernel-layout nibbles and the scales."""
        n, k = q.shape
        PackedLinear.__init__(self, k, n, bias)
        why = int4_supported(n, k, group_size)
        if why:
            raise ValueError(why)
        self.group_size = group_size
        # sizewise's kernel where it is built and the shape suits it, else aten's; one layout is kept, not both
        self._own = own_int4_kernel(k, group_size) and n % 16 == 0
        if self._own:
            self.register_buffer("weight_q4", kernels.pack_q4(q), persistent=False)  # uint8 [N, K/2]
        else:
            self.register_buffer("weight_int4pack", int4_kernel_pack(q))  # uint8, aten's layout
        self.register_buffer("weight_scale", scale.to(Q.SCALE_DTYPE).contiguous())  # [N, K/g]

    def _set_sz(self, sz: torch.Tensor) -> None:
        """(scale, zero) bf16 [G, N, 2] with w = (q - 8) * scale + zero: aten's layout, or ours (kernels.rows_scales)."""
        if self._own:
            t = sz.transpose(0, 1)  # [N, G, 2]
            sz = kernels.rows_scales(t[..., 0], t[..., 1])
        self.register_buffer("_sz", sz, persistent=False)

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return f"int4-g{self.group_size}-asym"

    @property
    def kernel(self) -> str:  # type: ignore[override]
        return int4_kernel_name(self._own, _dt(self.act_dtype))

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 128, **options: Any) -> "Int4WeightOnlyLinear":
        q, s, zp = Q.group_quantize_int4(linear.weight.detach(), group_size)
        return cls(q, s, zp, group_size, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = _flat(x).to(self.act_dtype)
        if self._own and self.act_dtype == torch.bfloat16:  # aten's bf16 activations; exact weights, fp32 sums
            y = kernels.loaded().linear(xs, kernels.Q4, self.weight_q4, self._sz, self.group_size)
        elif self._own:  # other activation dtypes: the reference product (slow; measurements only)
            y = xs @ self.dequantized_weight().to(xs.dtype).t()
        else:
            sz = self._sz if self.act_dtype == torch.bfloat16 else self._sz.to(self.act_dtype)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xs, self.weight_int4pack, self.group_size, sz)
        return self._finish(y, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def int_weight(self) -> torch.Tensor:
        if self._own:
            return kernels.unpack_q4(self.weight_q4, self.in_features)
        return int4_kernel_unpack(self.weight_int4pack, self.out_features, self.in_features)

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return int4_packed_tensors(self.int_weight(), self.weight_scale, self.weight_zero_point)

    def packed_meta(self) -> dict:
        return {**super().packed_meta(), "group_size": self.group_size}

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        n, k = (int(v) for v in tensors["weight_shape"].tolist())
        q = Q.unpack_int32_to_int4(tensors["weight_packed"], k)
        zp = Q.unpack_int32_to_int4(tensors["weight_zero_point"].t().contiguous(), n).t()
        return cls(q, tensors["weight_scale"], zp, int(meta["group_size"]), bias)

    def dequantized_weight(self) -> torch.Tensor:
        return Q.group_dequantize_int4(self.int_weight(), self.weight_scale, self.weight_zero_point.to(torch.int32),
                                       self.group_size)


class Int4FloatZeroLinear(Int4WeightOnlyLinear):
    """int4 group-wise weights with a bf16 float zero per group: w = (q - 8) * scale + zero, the kernel's
    own convention, so `_sz` *is* the stored (scale, zero) and the kernel computes exactly what
    `dequantized_weight` says. Checkpoint tensors: weight_packed (as compressed-tensors), weight_scale
    and weight_zero (bf16 [N, K/g]), weight_shape; compressed-tensors has no float-zero int4 layout,
    so the scheme is listed under the manifest's sizewise-only schemes."""

    weight_keys = ("weight_packed", "weight_scale", "weight_zero", "weight_shape")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None) -> None:
        self._pack(q, scale, group_size, bias)
        self.register_buffer("weight_zero", zero.to(Q.SCALE_DTYPE).contiguous())  # [N, K/g]
        self._set_sz(torch.stack([self.weight_scale, self.weight_zero], dim=-1).transpose(0, 1).contiguous())

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return f"int4-g{self.group_size}-fz"

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 128, grid: str = "mse",
                   importance: torch.Tensor | None = None, **options: Any) -> "Int4FloatZeroLinear":
        q, s, z = Q.quantize_int4(linear.weight.detach(), group_size, "float", grid, importance)
        return cls(q, s, z, group_size, linear.bias)

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return int4_float_zero_tensors(self.int_weight(), self.weight_scale, self.weight_zero)

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        n, k = (int(v) for v in tensors["weight_shape"].tolist())
        q = Q.unpack_int32_to_int4(tensors["weight_packed"], k)
        return cls(q, tensors["weight_scale"], tensors["weight_zero"], int(meta["group_size"]), bias)

    def dequantized_weight(self) -> torch.Tensor:
        return Q.dequantize_int4_float(self.int_weight(), self.weight_scale, self.weight_zero, self.group_size)


class Int4SuperBlockLinear(Int4FloatZeroLinear):
    """int4 group-wise weights whose per-group scale and zero are stored as 6-bit codes against three fp16
    numbers per row super-block (scale = a * cs, zero = b + e * cz; llama.cpp's Q4_K idea, with super-blocks
    that divide the row, since 576 is no multiple of Q4_K's 256): a g32 grid in 4.46-4.47 bits per weight
    instead of 5. The codes are expanded once to the bf16 (scale, zero) the int4 kernel consumes, so it runs
    exactly what `dequantized_weight` says, at g32 speed. Checkpoint tensors: weight_packed (as
    compressed-tensors), weight_scale_codes and weight_zero_codes (6-bit, four in three bytes),
    weight_superblock (fp16 [N, n_super, 3]), weight_shape. Scheme int4-gG-s6."""

    weight_keys = ("weight_packed", "weight_scale_codes", "weight_zero_codes", "weight_superblock", "weight_shape")

    def __init__(self, q: torch.Tensor, cs: torch.Tensor, cz: torch.Tensor, sup: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None) -> None:
        scale, zero = Q.sb_expand(cs, cz, sup)
        super().__init__(q, scale, zero, group_size, bias)
        self.register_buffer("weight_scale_codes", cs.to(torch.uint8).contiguous())  # [N, G] in [0, 63]
        self.register_buffer("weight_zero_codes", cz.to(torch.uint8).contiguous())
        self.register_buffer("weight_superblock", sup.to(torch.float16).contiguous())  # [N, n_super, 3]

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return f"int4-g{self.group_size}-s6"

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 32, importance: torch.Tensor | None = None,
                   **options: Any) -> "Int4SuperBlockLinear":
        q, cs, cz, sup = Q.fit_int4_sb(linear.weight.detach(), group_size, importance)
        return cls(q, cs, cz, sup, group_size, linear.bias)

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return int4_s6_tensors(self.int_weight(), self.weight_scale_codes, self.weight_zero_codes,
                               self.weight_superblock)

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        n, k = (int(v) for v in tensors["weight_shape"].tolist())
        g = int(meta["group_size"])
        q = Q.unpack_int32_to_int4(tensors["weight_packed"], k)
        cs = Q.unpack_6bit(tensors["weight_scale_codes"], n * (k // g)).reshape(n, k // g)
        cz = Q.unpack_6bit(tensors["weight_zero_codes"], n * (k // g)).reshape(n, k // g)
        return cls(q, cs, cz, tensors["weight_superblock"], g, bias)


def int4_s6_tensors(q: torch.Tensor, cs: torch.Tensor, cz: torch.Tensor, sup: torch.Tensor) -> dict[str, torch.Tensor]:
    """Checkpoint tensors of Int4SuperBlockLinear (the in-memory and the streaming writer share them)."""
    n, k = q.shape
    return {"weight_packed": Q.pack_int4_to_int32(q),
            # flattened, so a row of 18 groups packs into 13.5 bytes, not 15 (padding only at the end)
            "weight_scale_codes": Q.pack_6bit(cs.reshape(1, -1)),
            "weight_zero_codes": Q.pack_6bit(cz.reshape(1, -1)),
            "weight_superblock": sup.to(torch.float16).contiguous(),
            "weight_shape": torch.tensor([n, k], dtype=torch.int64)}


def int4_float_zero_tensors(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    n, k = q.shape
    return {"weight_packed": Q.pack_int4_to_int32(q), "weight_scale": scale.to(Q.SCALE_DTYPE).contiguous(),
            "weight_zero": zero.to(Q.SCALE_DTYPE).contiguous(),
            "weight_shape": torch.tensor([n, k], dtype=torch.int64)}


def int4_linear(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                bias: torch.Tensor | None) -> Int4WeightOnlyLinear:
    """The module for either zero convention, told apart by the zero's dtype."""
    cls = Int4FloatZeroLinear if zero.is_floating_point() else Int4WeightOnlyLinear
    return cls(q, scale, zero, group_size, bias)


def int4_tensors(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """Checkpoint tensors for either zero convention (what the module's packed_tensors() writes)."""
    if zero.is_floating_point():
        return int4_float_zero_tensors(q, scale, zero)
    return int4_packed_tensors(q, scale, zero)


def _dt(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype))


register_scheme("int8-wo", Int8WeightOnlyLinear)
register_scheme("int8-wo-pack", Int8PackedWeightOnlyLinear)
register_scheme("int8-dyn", Int8DynamicLinear)
register_scheme("int8-static", Int8StaticLinear)
for _g in (32, 64, 128, 256):
    register_scheme(f"int4-g{_g}-asym", Int4WeightOnlyLinear)
    register_scheme(f"int4-g{_g}-fz", Int4FloatZeroLinear)
    register_scheme(f"int4-g{_g}-s6", Int4SuperBlockLinear)
