"""The llama-family decoder as an ONNX graph, built node by node with onnx.helper.

Why by hand: the exporters (torch.onnx, optimum) trace float modules and would re-quantize; building
the graph ourselves puts sizewise's own int4/int8 codes into `com.microsoft.MatMulNBits` unchanged,
and keeps every other op a standard ONNX op (opset 17), so what runs is readable from this file.

I/O (the optimum / onnxruntime-genai decoder layout, past and present in BNSH):
  inputs   input_ids [batch, sequence_length] int64, attention_mask [batch, total_sequence_length] int64,
           position_ids [batch, sequence_length] int64,
           past_key_values.{i}.key / .value [batch, kv_heads, past_sequence_length, head_dim] (dtype)
  outputs  logits [batch, sequence_length, vocab] float32,
           present.{i}.key / .value [batch, kv_heads, total_sequence_length, head_dim] (dtype)
The first step passes past tensors with past_sequence_length 0; present = Concat(past, new) on axis 2.

Weights arrive as `LinearSpec`s (see `sizewise.export.onnx.linear_spec`):
  float  W [N, K]                      -> MatMul(x, W^T) (a tied head: Gemm(transB=1) on the table itself)
  int4   q [N, K] in 0..15, scale [N, G], zero point uint8 [N, G]   w = (q - zp) * s
         -> MatMulNBits(bits=4, block_size=g, packed uint8 zero points): exact (checked against
            onnxruntime: the dequantized weights are bit-identical)
  int4   q, scale, float zero [N, G]   w = (q - 8) * s + z  (sizewise's float-zero layout)
         -> MatMulNBits(bits=4, no zero points: onnxruntime's default zp is 8) + ReduceSum(x per group) @ Z^T.
            Every stored value is used as is; onnxruntime's float zero points compute (q - zp) * s and would
            need zp = 8 - z/s, a re-rounded value (measured 1e-7 relative error per weight, not exact).
         GGUF Q4_1 (w = q * d + m) is the same with zero points 0 and Z = m; Q4_0 (w = (q - 8) * d) needs neither.
  int8   q [N, K] int8, scale [N] (one per row) or [N, K/group] (GGUF Q8_0: per block of 32)   w = q * s
         -> MatMulNBits(bits=8, codes q + 128, default zp 128, a row scale repeated per block): exact weights;
            computed at accuracy_level 4 by default (ACCURACY_INT8 below).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OPSET = 17
MS = "com.microsoft"
# onnxruntime 1.32's CPU MatMulNBits has no fp32 kernel for bits=8: accuracy_level 0 dequantizes the whole
# weight on every call (lm_head of SmolLM2, [49152, 576]: 198 ms per call, against 2.9 ms at level 4 on
# this 2-core CPU). Level 4 quantizes the activations to int8 per block (weights untouched), which is what
# llama.cpp does for a Q8_0 dot product; the KLD it adds is measured in the export's check.
ACCURACY_INT8 = 4


@dataclass
class LinearSpec:
    kind: str  # "float" | "int4" | "int8"
    n: int
    k: int
    weight: np.ndarray | None = None  # float [N, K] (kind float)
    q: np.ndarray | None = None  # uint8 [N, K] codes in 0..15 (int4) or int8 [N, K] (int8)
    scale: np.ndarray | None = None  # float32 [N, G] (int4; int8 per block) or [N] (int8 per row)
    zero_point: np.ndarray | None = None  # uint8 [N, G] (int4 integer zero points; None: 8)
    zero: np.ndarray | None = None  # float32 [N, G] added per group: w = (q - zero_point) * scale + zero
    group: int = 0
    bias: np.ndarray | None = None
    tied_table: bool = False  # float head that is the embedding table itself (kind float, weight None)
    share_int8_with_embedding: bool = False  # int8 head that reads the embedding's codes


@dataclass
class LlamaSpec:
    """Everything the graph needs, as numpy (fp32 unless said); built by onnx.py from a loaded model."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv: int
    head_dim: int
    vocab: int
    eps: float
    cos: np.ndarray  # [max_pos, head_dim/2] (HF's cos incl. attention_scaling, fp32)
    sin: np.ndarray
    embed: np.ndarray | None  # float table [V, H], or None with embed_int8 set
    embed_int8: tuple[np.ndarray, np.ndarray] | None  # (q int8 [V, H], scale [V] or [V, H/32]) int8 token table
    layers: list[dict]  # {ln1, ln2: [H], q, k, v, o, gate, up, down: LinearSpec}
    norm: np.ndarray
    head: LinearSpec
    act: str = "silu"
    notes: list[str] = field(default_factory=list)


class Graph:
    """A growing ONNX graph: nodes, initializers and fresh names."""

    def __init__(self, dtype: np.dtype) -> None:
        from onnx import TensorProto
        self.nodes: list = []
        self.inits: list = []
        self.dtype = np.dtype(dtype)
        self.onnx_dtype = TensorProto.FLOAT16 if self.dtype == np.float16 else TensorProto.FLOAT
        self._n = 0
        self._consts: dict = {}
        self.accuracy_int8 = ACCURACY_INT8

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const_i64(self, values) -> str:
        key = ("i64", tuple(np.atleast_1d(values).tolist()), np.ndim(values))
        if key not in self._consts:
            self._consts[key] = self.init(self.fresh("c_i64"), np.array(values, dtype=np.int64))
        return self._consts[key]

    def const_f(self, value: float, dtype=None) -> str:
        dt = np.dtype(dtype or self.dtype)
        key = ("f", float(value), dt.str)
        if key not in self._consts:
            self._consts[key] = self.init(self.fresh("c_f"), np.array(value, dtype=dt))
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str | None = None,
           name: str | None = None, **attrs):
        from onnx import helper
        base = name or op_type.lower()
        outs = [self.fresh(base) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh("n_" + base),
                                           domain=domain or "", **attrs))
        return outs[0] if n_out == 1 else outs


# --- weight packing for MatMulNBits ---

def pack_int4_blocks(q: np.ndarray, block: int) -> np.ndarray:
    """uint8 codes [N, K] in 0..15 -> MatMulNBits B [N, K/block, block/2]: element 2j in the low nibble."""
    n, k = q.shape
    qq = q.astype(np.uint8).reshape(n, k // block, block)
    return (qq[..., 0::2] | (qq[..., 1::2] << 4)).astype(np.uint8)


def pack_int4_zero_points(zp: np.ndarray) -> np.ndarray:
    """uint8 [N, G] -> [N * ceil(G/2)]: per row, two groups per byte (low nibble first), an odd count padded."""
    n, g = zp.shape
    z = zp.astype(np.uint8)
    if g % 2:
        z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def int8_block(k: int) -> int:
    for b in (128, 64, 32, 16):
        if k % b == 0:
            return b
    raise ValueError(f"input dim {k} is not a multiple of 16: MatMulNBits bits=8 cannot take it")


def block_scales(scale: np.ndarray, k: int, block: int) -> np.ndarray:
    """[N] row scales (repeated per block) or [N, K/block] block scales -> [N, K/block]."""
    if scale.ndim == 2:
        return scale
    return np.repeat(scale.reshape(-1, 1), k // block, 1)


def int8_codes(q: np.ndarray, block: int) -> np.ndarray:
    """int8 [N, K] -> MatMulNBits bits=8 B [N, K/block, block] uint8 codes q + 128 (default zero point 128)."""
    n, k = q.shape
    return (q.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // block, block)


# --- building blocks ---

def linear(g: Graph, x: str, spec: LinearSpec, name: str, embed_name: str | None = None,
           int8_table: tuple[str, str] | None = None, accuracy_level: int = 0) -> str:
    """x [..., K] -> [..., N] by the spec's kind (module docstring)."""
    dt = g.dtype
    if spec.kind == "float":
        if spec.tied_table:
            flat = g.op("Reshape", [x, g.const_i64([-1, spec.k])])
            y = g.op("Gemm", [flat, embed_name], transB=1, name=name)
            shape = g.op("Shape", [x])
            lead = g.op("Slice", [shape, g.const_i64([0]), g.const_i64([-1])])
            y = g.op("Reshape", [y, g.op("Concat", [lead, g.const_i64([spec.n])], axis=0)])
        else:
            w = g.init(f"{name}.weight_t", spec.weight.T.astype(dt))
            y = g.op("MatMul", [x, w], name=name)
    elif spec.kind == "int4":
        b = g.init(f"{name}.qweight", pack_int4_blocks(spec.q, spec.group))
        s = g.init(f"{name}.scales", spec.scale.astype(dt).reshape(-1))
        ins = [x, b, s]
        if spec.zero_point is not None:
            ins.append(g.init(f"{name}.qzeros", pack_int4_zero_points(spec.zero_point)))
        y = g.op("MatMulNBits", ins, domain=MS, name=name, K=spec.k, N=spec.n, bits=4,
                 block_size=spec.group, accuracy_level=accuracy_level)
        if spec.zero is not None:  # + sum_k-in-group(x) * z[n, group]
            ng = spec.k // spec.group
            xg = g.op("Reshape", [x, g.const_i64([0, 0, ng, spec.group])])  # x is [B, S, K] throughout
            xs = g.op("ReduceSum", [xg, g.const_i64([-1])], keepdims=0)
            zt = g.init(f"{name}.zeros_t", spec.zero.T.astype(dt))  # [G, N]
            y = g.op("Add", [y, g.op("MatMul", [xs, zt])])
    elif spec.kind == "int8":
        block = spec.group or int8_block(spec.k)
        if spec.share_int8_with_embedding and int8_table is not None:
            b, s = int8_table  # the token table's own codes and block scales, stored once
        else:
            b = g.init(f"{name}.qweight", int8_codes(spec.q, block))
            s = g.init(f"{name}.scales", block_scales(spec.scale, spec.k, block).astype(dt).reshape(-1))
        y = g.op("MatMulNBits", [x, b, s], domain=MS, name=name, K=spec.k, N=spec.n, bits=8,
                 block_size=block, accuracy_level=g.accuracy_int8)
    else:
        raise ValueError(f"unknown linear kind {spec.kind!r}")
    if spec.bias is not None:
        y = g.op("Add", [y, g.init(f"{name}.bias", spec.bias.astype(dt))])
    return y


def rms_norm(g: Graph, x: str, w: np.ndarray, eps: float, name: str) -> str:
    """HF's LlamaRMSNorm: in fp32, x * 1/sqrt(mean(x^2) + eps), back to the stream dtype, times w."""
    xf = g.op("Cast", [x], to=1) if g.dtype == np.float16 else x
    var = g.op("ReduceMean", [g.op("Pow", [xf, g.const_f(2.0, np.float32)])], axes=[-1], keepdims=1)
    y = g.op("Div", [xf, g.op("Sqrt", [g.op("Add", [var, g.const_f(eps, np.float32)])])])
    if g.dtype == np.float16:
        y = g.op("Cast", [y], to=g.onnx_dtype)
    return g.op("Mul", [y, g.init(f"{name}.weight", w.astype(g.dtype))], name=name)


def rope(g: Graph, x: str, cos: str, sin: str, half: int) -> str:
    """x [B, h, S, D] * cos + rotate_half(x) * sin (HF's rotate_half: [-x2, x1])."""
    x1, x2 = g.op("Split", [x, g.const_i64([half, half])], n_out=2, axis=-1)
    rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])


def build(spec: LlamaSpec, dtype=np.float32, accuracy_level: int = 0, accuracy_int8: int = ACCURACY_INT8):
    """LlamaSpec -> onnx.ModelProto (the decoder with past/present, module docstring).

    accuracy_level / accuracy_int8: MatMulNBits' compute mode for bits=4 / bits=8 nodes (0: fp32, 4: int8
    activations quantized per block, as llama.cpp does for its Q4/Q8 dot products)."""
    from onnx import TensorProto, helper

    g = Graph(dtype)
    g.accuracy_int8 = accuracy_int8
    dt = g.dtype
    H, nH, nKV, D, L = spec.hidden, spec.n_heads, spec.n_kv, spec.head_dim, spec.n_layers
    rep = nH // nKV
    kv_shape = ["batch", nKV, "past_sequence_length", D]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence_length", spec.vocab])]
    for i in range(L):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", g.onnx_dtype, kv_shape))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", g.onnx_dtype, ["batch", nKV, "total_sequence_length", D]))

    # token table: float (Gather) or int8 rows (Gather codes and row scales; the head reads the same codes)
    int8_table = None
    if spec.embed_int8 is not None:
        q, s = spec.embed_int8
        block = H // s.shape[1] if s.ndim == 2 else int8_block(H)
        bs = block_scales(s, H, block).astype(dt)  # [V, H/b]
        codes_t = g.init("model.embed_tokens.qweight", int8_codes(q, block))  # [V, H/b, b] uint8
        scales_t = g.init("model.embed_tokens.scales", bs.reshape(-1))
        int8_table = (codes_t, scales_t)
        codes = g.op("Gather", [codes_t, "input_ids"], axis=0)  # [B, S, H/b, b]
        rows = g.op("Sub", [g.op("Cast", [codes], to=g.onnx_dtype), g.const_f(128.0)])
        sc = g.op("Gather", [g.op("Reshape", [scales_t, g.const_i64([-1, H // block, 1])]), "input_ids"], axis=0)
        x = g.op("Reshape", [g.op("Mul", [rows, sc]), g.const_i64([0, 0, H])], name="embed")
        embed_name = None
    else:
        embed_name = g.init("model.embed_tokens.weight", spec.embed.astype(dt))
        x = g.op("Gather", [embed_name, "input_ids"], axis=0, name="embed")

    # rotary tables gathered at position_ids -> [B, 1, S, D]
    def table(arr, nm):
        t = g.op("Gather", [g.init(nm, arr.astype(dt)), "position_ids"], axis=0)
        return g.op("Unsqueeze", [g.op("Concat", [t, t], axis=-1), g.const_i64([1])])
    cos, sin = table(spec.cos, "rotary.cos_cache"), table(spec.sin, "rotary.sin_cache")

    # additive mask [B, 1, 1, S, T]: key j visible to query i iff j <= past + i and attention_mask[b, j]
    scalar = lambda t, axis: g.op("Gather", [g.op("Shape", [t]), g.const_i64(axis)], axis=0)  # noqa: E731
    total = scalar("attention_mask", 1)
    past = scalar("past_key_values.0.key", 2)
    seq = scalar("input_ids", 1)
    one = g.const_i64(1)
    kidx = g.op("Range", [g.const_i64(0), total, one])
    qidx = g.op("Unsqueeze", [g.op("Range", [past, g.op("Add", [past, seq]), one]), g.const_i64([1])])
    causal = g.op("LessOrEqual", [kidx, qidx])  # [S, T]
    pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), g.const_i64([1, 2, 3])])
    allowed = g.op("And", [causal, pad])  # [B, 1, 1, S, T]
    mask = g.op("Where", [allowed, g.const_f(0.0, np.float32),
                          g.const_f(float(np.finfo(np.float32).min), np.float32)], name="attn_mask")
    scaling = g.const_f(D ** -0.5, np.float32)

    for i, lay in enumerate(spec.layers):
        p = f"model.layers.{i}"
        h = rms_norm(g, x, lay["ln1"], spec.eps, f"{p}.input_layernorm")
        qp = linear(g, h, lay["q"], f"{p}.self_attn.q_proj", accuracy_level=accuracy_level)
        kp = linear(g, h, lay["k"], f"{p}.self_attn.k_proj", accuracy_level=accuracy_level)
        vp = linear(g, h, lay["v"], f"{p}.self_attn.v_proj", accuracy_level=accuracy_level)
        heads = lambda t, n: g.op("Transpose", [g.op("Reshape", [t, g.const_i64([0, 0, n, D])])], perm=[0, 2, 1, 3])  # noqa: E731
        q = rope(g, heads(qp, nH), cos, sin, D // 2)
        k = rope(g, heads(kp, nKV), cos, sin, D // 2)
        v = heads(vp, nKV)
        pk = g.op("Concat", [f"past_key_values.{i}.key", k], axis=2)
        pv = g.op("Concat", [f"past_key_values.{i}.value", v], axis=2)
        g.nodes.append(helper.make_node("Identity", [pk], [f"present.{i}.key"]))
        g.nodes.append(helper.make_node("Identity", [pv], [f"present.{i}.value"]))
        q5 = g.op("Reshape", [q, g.const_i64([0, nKV, rep, -1, D])])  # head h = kv * rep + r (HF repeat_kv)
        kt = g.op("Unsqueeze", [g.op("Transpose", [pk], perm=[0, 1, 3, 2]), g.const_i64([2])])  # [B, kv, 1, D, T]
        v5 = g.op("Unsqueeze", [pv, g.const_i64([2])])
        sc = g.op("MatMul", [q5, kt])
        if dt == np.float16:
            sc = g.op("Cast", [sc], to=TensorProto.FLOAT)
        sc = g.op("Add", [g.op("Mul", [sc, scaling]), mask])
        pr = g.op("Softmax", [sc], axis=-1)
        if dt == np.float16:
            pr = g.op("Cast", [pr], to=g.onnx_dtype)
        att = g.op("MatMul", [pr, v5])  # [B, kv, rep, S, D]
        att = g.op("Reshape", [g.op("Transpose", [g.op("Reshape", [att, g.const_i64([0, nH, -1, D])])],
                                    perm=[0, 2, 1, 3]), g.const_i64([0, 0, nH * D])])
        x = g.op("Add", [x, linear(g, att, lay["o"], f"{p}.self_attn.o_proj", accuracy_level=accuracy_level)])
        h = rms_norm(g, x, lay["ln2"], spec.eps, f"{p}.post_attention_layernorm")
        gt = linear(g, h, lay["gate"], f"{p}.mlp.gate_proj", accuracy_level=accuracy_level)
        up = linear(g, h, lay["up"], f"{p}.mlp.up_proj", accuracy_level=accuracy_level)
        act = g.op("Mul", [gt, g.op("Sigmoid", [gt])])
        x = g.op("Add", [x, linear(g, g.op("Mul", [act, up]), lay["down"], f"{p}.mlp.down_proj",
                                   accuracy_level=accuracy_level)])
    x = rms_norm(g, x, spec.norm, spec.eps, "model.norm")
    logits = linear(g, x, spec.head, "lm_head", embed_name=embed_name, int8_table=int8_table,
                    accuracy_level=accuracy_level)
    g.nodes.append(helper.make_node("Cast", [logits], ["logits"], to=TensorProto.FLOAT))
    graph = helper.make_graph(g.nodes, "sizewise_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="sizewise")
    model.ir_version = 8
    return model
