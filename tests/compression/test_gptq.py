"""GPTQ: lower layer-output error than RTN on correlated inputs, same storage."""
from __future__ import annotations

import pytest
import torch

from sizewise.compression import quant as Q
from sizewise.compression.gptq import HessianAccumulator, gptq_quantize_int8, gptq_quantize_weight


def _correlated_inputs(n=2048, k=256, rank=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g)
    a = torch.randn(rank, k, generator=g)
    return z @ a + 0.05 * torch.randn(n, k, generator=g)


def _out_err(x, w, q, s, zp, g):
    return ((x @ w.t() - x @ Q.group_dequantize_int4(q, s, zp, g).t()) ** 2).mean().item()


@pytest.mark.parametrize("g", [64, 128])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_layer_output(g, act_order):
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    x = _correlated_inputs()
    acc = HessianAccumulator(256)
    for chunk in x.split(300):  # accumulate in uneven batches: H must equal 2/n X^T X
        acc.add(chunk)
    assert torch.allclose(acc.H, 2 * x.t() @ x / x.shape[0], rtol=1e-3, atol=1e-3)
    q, s, zp = gptq_quantize_weight(w, acc.H, g, act_order=act_order)
    qr, sr, zr = Q.group_quantize_int4(w, g)
    assert q.shape == w.shape and s.shape == sr.shape and zp.shape == zr.shape
    assert q.min() >= 0 and q.max() <= 15
    e_gptq, e_rtn = _out_err(x, w, q, s, zp, g), _out_err(x, w, qr, sr, zr, g)
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_float_zero_fitted_grid_beats_rtn_with_the_same_grid(act_order):
    """The recipes' default: float zeros, grids fitted with diag(H) as column weights, in GPTQ and in
    RTN alike; GPTQ's error feedback still pays on top of the better grid."""
    torch.manual_seed(5)
    w = torch.randn(64, 256)
    x = _correlated_inputs(seed=3) * (torch.rand(256) * 3 + 0.2)  # uneven channel scales
    acc = HessianAccumulator(256)
    acc.add(x)
    assert torch.allclose(acc.importance, x.pow(2).mean(0), rtol=1e-4)
    q, s, z = gptq_quantize_weight(w, acc.H, 64, act_order=act_order, zero="float", grid="act-mse")
    assert z.dtype == torch.bfloat16 and s.shape == z.shape == (64, 4)
    qr, sr, zr = Q.quantize_int4(w, 64, "float", "act-mse", acc.importance)
    err = lambda qq, ss, zz: float((x @ (w - Q.dequantize_int4(qq, ss, zz, 64)).t()).pow(2).mean())
    qm, sm, zm = Q.quantize_int4(w, 64, "float", "minmax")
    assert err(qr, sr, zr) < err(qm, sm, zm)  # the activation-weighted grid beats min/max for RTN
    assert err(q, s, z) < 0.7 * err(qr, sr, zr), (err(q, s, z), err(qr, sr, zr))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_int8_beats_per_channel_rtn_on_layer_output(act_order):
    """Same per-channel int8 grid and scale as RTN; only the rounding differs, and it pays."""
    torch.manual_seed(4)
    w = torch.randn(64, 256)
    x = _correlated_inputs()
    acc = HessianAccumulator(256)
    acc.add(x)
    q, s = gptq_quantize_int8(w, acc.H, act_order=act_order)
    qr, sr = Q.quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and torch.equal(s, sr) and int(q.abs().max()) <= 127
    err = lambda qq: float((x @ (w - Q.dequantize_per_channel_int8(qq, s)).t()).pow(2).mean())
    assert err(q) < 0.7 * err(qr), (err(q), err(qr))


def test_gptq_with_identity_hessian_is_close_to_rtn():
    """With uncorrelated inputs there is nothing to compensate: GPTQ's weight error stays near RTN's."""
    torch.manual_seed(2)
    w = torch.randn(32, 128)
    q, s, zp = gptq_quantize_weight(w, torch.eye(128), 64)
    qr, sr, zr = Q.group_quantize_int4(w, 64)
    e = (w - Q.group_dequantize_int4(q, s, zp, 64)).pow(2).mean()
    er = (w - Q.group_dequantize_int4(qr, sr, zr, 64)).pow(2).mean()
    assert e < 1.1 * er


def test_dead_inputs_do_not_break_cholesky():
    torch.manual_seed(3)
    x = _correlated_inputs(512, 128)
    x[:, :8] = 0
    acc = HessianAccumulator(128)
    acc.add(x)
    q, s, zp = gptq_quantize_weight(torch.randn(16, 128), acc.H, 64)
    assert torch.isfinite(s.float()).all()
