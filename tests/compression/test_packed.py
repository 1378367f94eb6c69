"""Packed modules against a float64 reference built from their own integers and scales."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sizewise.compression import packed as P
from sizewise.compression import quant as Q

BF16_EPS = 2.0 ** -8


def _lin(k=256, n=192, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def _bf16_bound(x, w):
    """Error budget of a bf16-activation kernel: x rounded to bf16 (2^-9 relative), fp32 accumulation,
    output rounded to bf16 (2^-9 relative): a few bf16 epsilons of sum |x||w|."""
    return 2 * BF16_EPS * (x.abs().double() @ w.abs().double().t()) + 1e-5


@pytest.mark.parametrize("cls,kw", [(P.Int8WeightOnlyLinear, {}), (P.Int4WeightOnlyLinear, {"group_size": 64}),
                                    (P.Int4WeightOnlyLinear, {"group_size": 32}),
                                    (P.Int4FloatZeroLinear, {"group_size": 64}),
                                    (P.Int4FloatZeroLinear, {"group_size": 32, "grid": "minmax"})])
@pytest.mark.parametrize("m", [1, 7, 33])
def test_weight_only_matches_dequantized_reference(cls, kw, m):
    lin = _lin()
    mod = cls.from_float(lin, **kw)
    x = torch.randn(m, 256)
    w = mod.dequantized_weight().double()
    ref = x.double() @ w.t() + lin.bias.double()
    y = mod(x)
    assert y.dtype == torch.float32 and y.shape == (m, 192)
    assert ((y.double() - ref).abs() <= _bf16_bound(x, w)).all()
    assert "bf16" in mod.kernel


def test_fp32_activation_path_is_selectable_and_recorded():
    lin = _lin()
    mod = P.Int4WeightOnlyLinear.from_float(lin, group_size=64)
    x = torch.randn(4, 256)
    mod.act_dtype = torch.float32
    assert "fp32" in mod.kernel
    ref = x.double() @ mod.dequantized_weight().double().t() + lin.bias.double()
    assert (mod(x).double() - ref).abs().max() < 1e-3 * ref.abs().max()


@pytest.mark.parametrize("m", [1, 2, 16, 17, 40])
def test_int8_dynamic_is_exact_integer_arithmetic(m):
    lin = _lin(seed=1)
    mod = P.Int8DynamicLinear.from_float(lin)
    x = torch.randn(m, 256)
    xq, xs = Q.quantize_per_token_int8(x)
    acc = xq.double() @ mod.weight.double().t()
    ref = acc * xs.double() * mod.weight_scale.double()[None, :] + lin.bias.double()
    assert torch.allclose(mod(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert mod.kernel.startswith("torch._int_mm")


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_int8_static_close_to_float(strategy):
    lin = _lin(seed=2)
    torch.manual_seed(5)
    x = torch.randn(64, 256) * torch.linspace(0.1, 4, 256)  # channels of different ranges
    amax = x.abs().amax(0) if strategy == "channel" else x.abs().amax()
    mod = P.Int8StaticLinear.from_float(lin, input_absmax=amax)
    assert mod.strategy == strategy
    ref = lin(x)
    err = (mod(x) - ref).abs().mean() / ref.abs().mean()
    assert err < 0.02
    # weights are quantized after folding the input scale in: error <= w_scale / 2 / input_scale per column
    s_in = mod.input_scale if strategy == "channel" else torch.ones(1)
    bound = mod.weight_scale.float()[:, None] * 0.5 / s_in[None, :] * (1 + 1e-4)
    assert ((mod.dequantized_weight() - lin.weight).abs() <= bound + 1e-7).all()


@pytest.mark.parametrize("make", [
    lambda l: P.Int8WeightOnlyLinear.from_float(l),
    lambda l: P.Int8DynamicLinear.from_float(l),
    lambda l: P.Int8StaticLinear.from_float(l, input_absmax=torch.rand(256) + 0.5),
    lambda l: P.Int4WeightOnlyLinear.from_float(l, group_size=128),
    lambda l: P.Int4FloatZeroLinear.from_float(l, group_size=64),
])
def test_packed_roundtrip_is_bit_identical(make):
    lin = _lin(seed=3)
    mod = make(lin)
    x = torch.randn(9, 256)
    cls = P.scheme_class(mod.scheme)
    assert cls is type(mod)
    again = cls.from_packed({k: v.clone() for k, v in mod.packed_tensors().items()}, mod.packed_meta(), mod.bias)
    assert torch.equal(again(x), mod(x))


def test_int4_packed_tensors_follow_compressed_tensors_layout():
    mod = P.Int4WeightOnlyLinear.from_float(_lin(), group_size=64)
    t = mod.packed_tensors()
    assert t["weight_packed"].dtype == torch.int32 and t["weight_packed"].shape == (192, 256 // 8)
    assert t["weight_scale"].shape == (192, 4)
    assert t["weight_zero_point"].dtype == torch.int32 and t["weight_zero_point"].shape == (192 // 8, 4)
    assert t["weight_shape"].tolist() == [192, 256]
    q = Q.unpack_int32_to_int4(t["weight_packed"], 256)
    assert torch.equal(q, mod.int_weight())


def test_registry_unknown_scheme_lists_known():
    with pytest.raises(KeyError, match="int4-g128-asym"):
        P.scheme_class("int3-weird")
    assert {"int8-wo", "int8-dyn", "int8-static", "int4-g64-asym"} <= set(P.known_schemes())


def test_int4_rejects_shapes_the_kernel_cannot_take():
    assert P.int4_supported(40, 128, 64) is not None  # N not a multiple of 16
    with pytest.raises(ValueError):
        P.Int4WeightOnlyLinear.from_float(nn.Linear(128, 40), group_size=64)
