"""Quantization primitives: error bounds that follow from the scales, and lossless packing."""
from __future__ import annotations

import pytest
import torch

from sizewise.compression import quant as Q
from sizewise.compression.packed import int4_kernel_pack, int4_kernel_unpack


def _w(n=64, k=256, seed=0):
    torch.manual_seed(seed)
    return torch.randn(n, k) * torch.linspace(0.01, 3, n)[:, None]  # rows of very different ranges


def test_int8_per_channel_error_within_half_a_step():
    w = _w()
    q, s = Q.quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and s.shape == (64,)
    err = (w - Q.dequantize_per_channel_int8(q, s)).abs()
    assert (err <= s.float()[:, None] * 0.5 * (1 + 1e-5) + 1e-7).all()
    assert q.abs().max() <= 127


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_group_error_within_half_a_step(g):
    w = _w()
    q, s, zp = Q.group_quantize_int4(w, g)
    assert q.min() >= 0 and q.max() <= 15 and zp.min() >= 0 and zp.max() <= 15
    assert s.shape == (64, 256 // g)
    dq = Q.group_dequantize_int4(q, s, zp, g)
    step = s.float().repeat_interleave(g, dim=1)
    assert ((w - dq).abs() <= step * 0.5 * (1 + 1e-5) + 1e-7).all()
    # zero is exactly representable (observers include 0 in the range)
    assert (Q.group_dequantize_int4(zp.repeat_interleave(g, 1), s, zp, g) == 0).all()


def test_float_zero_fit_reproduces_a_q4_1_like_grid_exactly():
    """Weights that already sit on a 16-level grid with a float minimum per group of 32 (GGUF Q4_1)
    are reproduced exactly by the float-zero fit; an integer zero point cannot place the minimum."""
    torch.manual_seed(1)
    n, k, g = 32, 128, 32
    s = (torch.rand(n, k // g) * 0.02 + 0.005).to(torch.bfloat16)
    z = (torch.randn(n, k // g) * 0.05).to(torch.bfloat16)
    q = torch.randint(0, 16, (n, k))
    q[:, ::g], q[:, 1::g] = 0, 15  # every group uses both ends of its grid
    w = Q.dequantize_int4_float(q, s, z, g)
    q2, s2, z2 = Q.quantize_int4(w, g, "float", "mse")
    assert torch.equal(Q.dequantize_int4_float(q2, s2, z2, g), w)
    qi, si, zi = Q.quantize_int4(w, g, "int", "minmax")
    assert (Q.group_dequantize_int4(qi, si, zi, g) - w).abs().max() > 1e-4


def test_fitted_grids_beat_min_max_on_their_own_objective():
    torch.manual_seed(2)
    w = torch.randn(64, 256) * (torch.rand(1, 256) + 0.5)
    imp = torch.rand(256) ** 4 * 100  # a few input channels matter much more than the rest
    err = {}
    for grid in ("minmax", "mse", "act-mse"):
        q, s, z = Q.quantize_int4(w, 64, "float", grid, imp)
        d2 = (Q.dequantize_int4(q, s, z, 64) - w) ** 2
        err[grid] = (d2.sum().item(), (d2 * imp).sum().item())
    assert err["mse"][0] < 0.95 * err["minmax"][0]  # least squares on the weights
    assert err["act-mse"][1] < 0.95 * err["mse"][1]  # least squares on what the layer's output sees


def test_more_fit_starts_never_lose_and_help_on_two_grids_in_a_group():
    """A g64 group of Q4_1-like weights holds two g32 grids: rounding makes the error piecewise and
    one least-squares start stops in a local optimum. The extra starts can only keep a group's best
    grid or find a better one, and on such weights they find better ones."""
    torch.manual_seed(3)
    n, k, g = 256, 512, 32
    s = (torch.rand(n, k // g) * 0.02 + 0.005).to(torch.bfloat16)
    z = (torch.randn(n, k // g) * 0.05).to(torch.bfloat16)
    w = Q.dequantize_int4_float(torch.randint(0, 16, (n, k)), s, z, g)

    def group_err(starts):
        s2, z2 = Q.fit_int4_float(w, 64, starts=starts)
        d = Q.dequantize_int4_float(Q.quantize_int4_float_with(w, s2, z2, 64), s2, z2, 64) - w
        return (d * d).reshape(n, k // 64, 64).sum(-1)

    one, three = group_err(Q.FIT_STARTS[:1]), group_err(Q.FIT_STARTS)
    assert len(Q.FIT_STARTS) > 1 and Q.FIT_STARTS[0] == (1.0, 0.0)  # the first start is min/max itself
    assert (three <= one * (1 + 1e-6)).all()
    assert three.sum() < 0.97 * one.sum()


def test_int4_group_must_divide():
    with pytest.raises(ValueError):
        Q.group_quantize_int4(torch.randn(16, 96), 64)


def test_int32_nibble_packing_roundtrip_and_order():
    torch.manual_seed(0)
    q = torch.randint(0, 16, (24, 64), dtype=torch.int32)
    p = Q.pack_int4_to_int32(q)
    assert p.shape == (24, 8) and p.dtype == torch.int32
    assert torch.equal(Q.unpack_int32_to_int4(p, 64), q)
    # lowest nibble first (compressed-tensors order)
    assert int(p[0, 0]) & 0xF == int(q[0, 0]) and (int(p[0, 0]) >> 4) & 0xF == int(q[0, 1])


@pytest.mark.parametrize("n,k", [(16, 64), (96, 192), (576, 1536)])
def test_cpu_kernel_layout_inverse(n, k):
    torch.manual_seed(n)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    assert torch.equal(int4_kernel_unpack(int4_kernel_pack(q), n, k), q)


def test_per_token_activation_quant():
    x = torch.randn(5, 32)
    xq, xs = Q.quantize_per_token_int8(x)
    assert xs.shape == (5, 1)
    assert ((x - xq.float() * xs).abs() <= xs * 0.5 + 1e-6).all()
