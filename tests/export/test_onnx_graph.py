"""MatMulNBits as onnx_graph builds it: the weights onnxruntime computes with are sizewise's, bit for bit.

Each check feeds the identity matrix through one exported Linear, so the output *is* the weight that
onnxruntime dequantized, and compares it with sizewise's own dequantization in fp32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from sizewise.compression import quant as Q  # noqa: E402
from sizewise.export import onnx_graph as OG  # noqa: E402


def _weight_seen_by_ort(spec: OG.LinearSpec, accuracy_int8: int = 0) -> np.ndarray:
    from onnx import TensorProto, helper
    g = OG.Graph(np.float32)
    g.accuracy_int8 = accuracy_int8
    y = OG.linear(g, "x", spec, "lin")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "m", spec.k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OG.OPSET), helper.make_opsetid(OG.MS, 1)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.eye(spec.k, dtype=np.float32)[None]})[0][0].T  # [N, K]


N, K = 48, 96  # 3 groups of 32: an odd group count exercises the zero-point padding


def _w(seed=0):
    torch.manual_seed(seed)
    return torch.randn(N, K)


def test_int4_integer_zero_point_exact():
    q, s, zp = Q.quantize_int4(_w(), 32, zero="int", grid="minmax")
    spec = OG.LinearSpec("int4", N, K, q=q.numpy().astype(np.uint8), scale=s.float().numpy(),
                         zero_point=zp.numpy().astype(np.uint8), group=32)
    ref = Q.dequantize_int4(q, s, zp, 32).numpy()
    assert np.array_equal(_weight_seen_by_ort(spec), ref)


def test_int4_float_zero_exact():
    q, s, z = Q.quantize_int4(_w(1), 32, zero="float", grid="mse")
    spec = OG.LinearSpec("int4", N, K, q=q.numpy().astype(np.uint8), scale=s.float().numpy(),
                         zero=z.float().numpy(), group=32)
    ref = Q.dequantize_int4(q, s, z, 32).numpy()
    assert np.array_equal(_weight_seen_by_ort(spec), ref)


def test_onnxruntime_float_zero_points_would_not_be_exact():
    """Why the float-zero layout is not written as MatMulNBits' own float zero points: zp = 8 - z/s is a
    re-rounded value, and onnxruntime's (q - zp) * s then misses sizewise's weights."""
    from onnx import TensorProto, helper, numpy_helper
    q, s, z = Q.quantize_int4(_w(1), 32, zero="float", grid="mse")
    sf, zf = s.float().numpy(), z.float().numpy()
    qq = q.numpy().astype(np.uint8)
    inits = [numpy_helper.from_array(OG.pack_int4_blocks(qq, 32), "B"), numpy_helper.from_array(sf.reshape(-1), "S"),
             numpy_helper.from_array((8 - zf / sf).astype(np.float32).reshape(-1), "Z")]
    node = helper.make_node("MatMulNBits", ["x", "B", "S", "Z"], ["y"], domain=OG.MS, K=K, N=N, bits=4, block_size=32)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OG.OPSET), helper.make_opsetid(OG.MS, 1)])
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.eye(K, dtype=np.float32)})[0].T
    ref = Q.dequantize_int4(q, s, z, 32).numpy()
    diff = np.abs(got - ref)
    assert diff.max() > 0 and diff.max() < 1e-5  # close, not equal


def test_gguf_q4_1_layout_exact():
    """w = q * d + m (GGUF Q4_1): zero points 0 and the minimum added per group."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (N, K)).astype(np.uint8)
    d = rng.random((N, K // 32)).astype(np.float16).astype(np.float32)
    m = (-rng.random((N, K // 32))).astype(np.float16).astype(np.float32)
    spec = OG.LinearSpec("int4", N, K, q=q, scale=d, zero_point=np.zeros((N, K // 32), np.uint8), zero=m, group=32)
    ref = (d[..., None] * q.reshape(N, K // 32, 32).astype(np.float32) + m[..., None]).reshape(N, K)
    assert np.array_equal(_weight_seen_by_ort(spec), ref)


@pytest.mark.parametrize("per_block", [False, True])
def test_int8_exact(per_block):
    w = _w(2)
    if per_block:  # GGUF Q8_0: one scale per 32
        s = (w.reshape(N, K // 32, 32).abs().amax(-1) / 127).half().float()
        q = torch.round(w.reshape(N, K // 32, 32) / s[..., None]).clamp(-127, 127).to(torch.int8).reshape(N, K)
        ref = (q.reshape(N, K // 32, 32).float() * s[..., None]).reshape(N, K).numpy()
        spec = OG.LinearSpec("int8", N, K, q=q.numpy(), scale=s.numpy(), group=32)
    else:
        q, s = Q.quantize_per_channel_int8(w)
        ref = Q.dequantize_per_channel_int8(q, s).numpy()
        spec = OG.LinearSpec("int8", N, K, q=q.numpy(), scale=s.float().numpy())
    assert np.array_equal(_weight_seen_by_ort(spec), ref)
