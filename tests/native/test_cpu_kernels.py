"""sizewise's CPU kernels against their references: exact layouts, fp32-rounding agreement with the PyTorch
product of the same weights and activations, batch invariance, the modules that use them, and the build cache."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from sizewise import kernels
from sizewise.compression import packed as P

ops = kernels.ops()
needs_ops = pytest.mark.skipif(ops is None, reason=f"sizewise's CPU kernels are not built here: {kernels.why_not()}")


def _close(y: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> bool:
    """fp32 sums of exact products: within a few fp32 ulps of sum |x||w| per output."""
    bound = 1e-5 * (x.abs().double() @ w.abs().double().t()) + 1e-6
    return bool(((y.double() - ref.double()).abs() <= bound).all())


def test_pack_q4_round_trip_and_layout():
    q = torch.randint(0, 16, (32, 96), dtype=torch.int32)
    p = kernels.pack_q4(q)
    assert p.shape == (32, 48) and p.dtype == torch.uint8
    assert torch.equal(kernels.unpack_q4(p, 96), q)
    # panels of 16 rows; per 4 inputs 32 bytes, byte j: row j/2 at input j%2 (low nibble), at 2 + j%2 (high);
    # panels in pairs, interleaved quad by quad: panel P's quad u at (P * K/4 + 2u + P%2) * 32
    row, k4, j = 21, 7, 11  # panel 1, row 5 of it; inputs 28..31
    assert j // 2 == row % 16
    flat = (0 * (96 // 4) + 2 * k4 + 1) * 32 + j
    assert int(p.reshape(-1)[flat]) == int(q[row, 4 * k4 + j % 2]) | (int(q[row, 4 * k4 + 2 + j % 2]) << 4)
    s, z = torch.rand(32, 3).to(torch.bfloat16), torch.rand(32, 3).to(torch.bfloat16)
    sz = kernels.rows_scales(s, z).reshape(-1)
    g = 2  # per panel and group: 16 scales, then 16 zeros; paired group by group
    at = (0 * 3 + 2 * g + 1) * 32
    assert sz[at + row % 16] == s[row, g] and sz[at + 16 + row % 16] == z[row, g]
    # a last odd panel is stored alone: 48 rows = one pair and panel 2
    q3 = torch.randint(0, 16, (48, 96), dtype=torch.int32)
    p3 = kernels.pack_q4(q3)
    assert torch.equal(kernels.unpack_q4(p3, 96), q3)
    row = 40
    assert int(p3.reshape(-1)[(2 * 24 + k4) * 32 + 2 * (row % 16)]) == int(q3[row, 4 * k4]) | (int(q3[row, 4 * k4 + 2]) << 4)
    with pytest.raises(ValueError, match="multiple-of-32"):
        kernels.pack_q4(torch.zeros(16, 48, dtype=torch.int32))
    with pytest.raises(ValueError, match="panels of 16"):
        kernels.pack_q4(torch.zeros(8, 64, dtype=torch.int32))


@needs_ops
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("m", [1, 3, 5, 17, 70, 150])  # 150: two token blocks of the widened path
def test_q4_matches_the_dequantized_product_on_bf16_activations(gs, m):
    torch.manual_seed(gs + m)
    n, k = 48, 256
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    scale = (torch.rand(n, k // gs) * 0.02 + 1e-3).to(torch.bfloat16)
    zero = (torch.randn(n, k // gs) * 0.02).to(torch.bfloat16)
    bias = torch.randn(n)
    w = ((q.view(n, -1, gs).float() - 8) * scale.float()[..., None] + zero.float()[..., None]).view(n, k)
    x = torch.randn(m, k).to(torch.bfloat16)
    y = ops.linear(x, kernels.Q4, kernels.pack_q4(q), kernels.rows_scales(scale, zero), gs, bias)
    ref = x.double() @ w.double().t() + bias.double()
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert _close(y, ref, x.float(), w)
    if m > 128:  # a row of the second token block is what it is alone
        assert torch.equal(ops.linear(x[140:141], kernels.Q4, kernels.pack_q4(q), kernels.rows_scales(scale, zero), gs, bias),
                           y[140:141])
    # fp32 input is rounded to bf16 first (nearest even), as .to(torch.bfloat16) does
    y32 = ops.linear(x.float() + 1e-4 * torch.randn(m, k) * x.float().abs(), kernels.Q4, kernels.pack_q4(q),
                     kernels.rows_scales(scale, zero), gs, bias)
    assert torch.allclose(y32, y, rtol=1e-2, atol=1e-2)


@needs_ops
@pytest.mark.parametrize("kind", ["q4", "bf16", "f32", "i8"])
def test_every_row_of_a_batch_is_what_it_is_alone(kind):
    """Batch invariance, bitwise: serving a row beside others must not change its numbers."""
    torch.manual_seed(3)
    n, k = 52, 128  # 52 rows: blocks of 4 and of 16 rows with remainders (int4: 48, panels in twos and one alone)
    x = torch.randn(23, k)
    if kind == "q4":
        n = 48
        args = (kernels.Q4, kernels.pack_q4(torch.randint(0, 16, (n, k))),
                kernels.rows_scales(torch.rand(n, 4) * 0.1, torch.randn(n, 4) * 0.1), 32)
    elif kind == "bf16":
        args = (kernels.BF16, torch.randn(n, k).to(torch.bfloat16), torch.empty(0), 32)
    elif kind == "f32":
        args = (kernels.F32, torch.randn(n, k), torch.empty(0), 32)
    else:
        args = (kernels.I8, torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n) * 0.01, 32)
    full = ops.linear(x, *args)
    for lo, hi in [(0, 1), (5, 6), (3, 7), (4, 21), (22, 23), (2, 10), (0, 8)]:  # both int4 paths (< 8, >= 8 rows)
        assert torch.equal(ops.linear(x[lo:hi], *args), full[lo:hi])
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert torch.equal(ops.linear(x, *args), full)
        finally:
            torch.set_num_threads(old)


@needs_ops
@pytest.mark.parametrize("m", [1, 5, 12])
def test_linear_multi_gives_each_weight_what_linear_gives_it_alone(m):
    """One parallel region over several weights, split in row blocks of 32 (an int4 panel pair): matrices
    with a lone last panel (48 and 80 rows), one that is a lone panel (16), and a row-major kind beside them
    must each get exactly `linear`'s output, whatever the thread count."""
    torch.manual_seed(11 + m)
    k = 128
    specs = []
    for n in (48, 16, 80):
        specs.append((kernels.Q4, kernels.pack_q4(torch.randint(0, 16, (n, k))),
                      kernels.rows_scales(torch.rand(n, k // 32) * 0.1, torch.randn(n, k // 32) * 0.1), 32, torch.randn(n)))
    specs.append((kernels.BF16, torch.randn(40, k).to(torch.bfloat16), torch.empty(0), 32, None))
    x = torch.randn(m, k).to(torch.bfloat16)
    alone = [ops.linear(x, *sp) for sp in specs]
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ys = ops.linear_multi(x, *[list(t) for t in zip(*specs)])
        finally:
            torch.set_num_threads(old)
        assert len(ys) == len(specs)
        for y, ref in zip(ys, alone):
            assert torch.equal(y, ref)


@needs_ops
def test_dense_kinds_match_their_references():
    torch.manual_seed(4)
    x = torch.randn(6, 96)
    wb = torch.randn(30, 96).to(torch.bfloat16)
    y = ops.linear(x, kernels.BF16, wb, torch.empty(0), 32)
    xb = x.to(torch.bfloat16).float()
    assert _close(y, xb.double() @ wb.double().t(), xb, wb.float())
    wf = torch.randn(30, 96)
    b = torch.randn(30)
    assert _close(ops.linear(x, kernels.F32, wf, torch.empty(0), 32, b), x.double() @ wf.double().t() + b.double(), x, wf)
    q8 = torch.randint(-127, 128, (30, 96), dtype=torch.int8)
    rs = (torch.rand(30) * 0.01).to(torch.bfloat16)
    w8 = q8.float() * rs.float()[:, None]
    assert _close(ops.linear(x, kernels.I8, q8, rs, 32), x.double() @ w8.double().t(), x, w8)


@needs_ops
def test_bad_shapes_are_refused():
    with pytest.raises(RuntimeError, match="x must be"):
        ops.linear(torch.randn(2, 64), kernels.F32, torch.randn(4, 96), torch.empty(0), 32)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.linear(torch.randn(2, 40), kernels.F32, torch.randn(4, 40), torch.empty(0), 32)
    with pytest.raises(RuntimeError, match="int4 scales"):
        ops.linear(torch.randn(2, 64), kernels.Q4, torch.zeros(16, 32, dtype=torch.uint8), torch.zeros(3), 32)
    with pytest.raises(RuntimeError, match="panels of 16"):
        ops.linear(torch.randn(2, 64), kernels.Q4, torch.zeros(8, 32, dtype=torch.uint8), torch.zeros(32, dtype=torch.bfloat16), 32)


@needs_ops
@pytest.mark.parametrize("cls", [P.Int4WeightOnlyLinear, P.Int4FloatZeroLinear, P.Int4SuperBlockLinear])
def test_int4_modules_agree_with_the_aten_path(monkeypatch, cls):
    """Same weights, same bf16 activations: sizewise's kernel and aten's agree to bf16-output rounding,
    and the codes read back exactly whichever layout holds them."""
    torch.manual_seed(5)
    lin = nn.Linear(192, 48)
    ours = cls.from_float(lin, 32 if cls is P.Int4SuperBlockLinear else 64)
    assert "linear_q4" in ours.kernel
    monkeypatch.setenv("SIZEWISE_KERNELS", "0")
    theirs = cls.from_float(lin, 32 if cls is P.Int4SuperBlockLinear else 64)
    assert "int4pack" in theirs.kernel
    assert torch.equal(ours.int_weight(), theirs.int_weight())
    assert torch.equal(ours.dequantized_weight(), theirs.dequantized_weight())
    x = torch.randn(2, 7, 192)
    a, b = ours(x), theirs(x)
    assert a.shape == b.shape == (2, 7, 48)
    assert torch.allclose(a, b, rtol=2 ** -7, atol=2e-2)
    xb = x.to(torch.bfloat16).float().reshape(-1, 192)
    w = ours.dequantized_weight()
    ref = (xb.double() @ w.double().t() + lin.bias.double()).reshape(2, 7, 48)
    assert _close(a.reshape(-1, 48), ref.reshape(-1, 48), xb, w)
    assert {k: v.shape for k, v in ours.packed_tensors().items()} == {k: v.shape for k, v in theirs.packed_tensors().items()}


def test_disabled_kernels_leave_the_pytorch_paths(monkeypatch):
    monkeypatch.setenv("SIZEWISE_KERNELS", "0")
    assert kernels.ops() is None and kernels.why_not() == "SIZEWISE_KERNELS=0"
    mod = P.Int4WeightOnlyLinear.from_float(nn.Linear(64, 16), 32)
    assert "int4pack" in mod.kernel and mod(torch.randn(3, 64)).shape == (3, 16)


def test_build_key_changes_with_torch_version_and_source(monkeypatch, tmp_path):
    k0 = kernels.build_key()
    monkeypatch.setattr(torch, "__version__", "9.9.9+other")
    assert kernels.build_key() != k0 and "9.9.9_other" in kernels.build_key()
    monkeypatch.undo()
    src = tmp_path / "k.cpp"
    src.write_text(kernels.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(kernels, "SOURCE", src)
    assert kernels.build_key() != k0


@needs_ops
def test_a_broken_cached_build_is_rebuilt_not_trusted(tmp_path):
    """A library in the cache that does not import (a half-written file, another machine's) is deleted
    and compiled again; a second process then loads the rebuilt one from the cache."""
    built = next((kernels.cache_root() / "kernels" / kernels.build_key()).glob("*.so"))
    cache = tmp_path / "cache"
    target = cache / "kernels" / kernels.build_key()
    target.mkdir(parents=True)
    for f in built.parent.iterdir():
        if f.is_file():
            shutil.copy2(f, target / f.name)  # timestamps kept: ninja calls the copy up to date
    st = built.stat()
    (target / built.name).write_bytes(b"not a shared library")
    os.utime(target / built.name, ns=(st.st_atime_ns, st.st_mtime_ns))
    code = textwrap.dedent("""
        import torch
        from sizewise import kernels
        m = kernels.ops()
        print(m is not None, kernels.why_not(), kernels.load_seconds()[1])
        y = m.linear(torch.ones(1, 32), kernels.F32, torch.ones(2, 32), torch.empty(0), 32)
        print(float(y.sum()))
    """)
    env = {**os.environ, "SIZEWISE_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "None", "False", "64.0"]
    assert (target / kernels.DONE).is_file()
    (target / "lock").write_text("")  # torch's loader lock left by a process killed mid-load: not waited on
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert again.stdout.split() == ["True", "None", "True", "64.0"]  # from the disk cache this time


def test_an_unfinished_build_is_not_imported(tmp_path):
    """A library without the finished-build mark (a build killed after linking) is rebuilt, not loaded."""
    target = tmp_path / "kernels" / kernels.build_key()
    target.mkdir(parents=True)
    (target / f"{kernels.MODULE}.so").write_bytes(b"half")
    assert kernels._import_built(target) is None
    (target / kernels.DONE).write_text("x")
    with pytest.raises(ImportError):
        kernels._import_built(target)


def _rope_ref(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@needs_ops
@pytest.mark.parametrize("D", [32, 64, 128, 24])  # 32/64/128: q and output in registers; 24: the any-size path
def test_paged_attention_matches_a_gathered_softmax_reference(D):
    torch.manual_seed(9)
    T, H, Hk, bs, blocks = 5, 6, 2, 4, 40
    S = blocks * bs
    kpool, vpool = torch.randn(Hk, S, D), torch.randn(Hk, S, D)
    ctx = [1, 3, 9, 16, 13]
    perm = torch.randperm(blocks)  # rows own disjoint, scattered blocks
    tables, used = torch.zeros(T, 4, dtype=torch.long), 0
    for t, n in enumerate(ctx):
        nb = -(-n // bs)
        tables[t, :nb] = perm[used:used + nb]
        used += nb
    slots = torch.tensor([int(tables[t, (n - 1) // bs]) * bs + (n - 1) % bs for t, n in enumerate(ctx)])
    q, k, v = torch.randn(T, H, D), torch.randn(T, Hk, D), torch.randn(T, Hk, D)
    cos, sin = torch.randn(T, D), torch.randn(T, D)
    kp, vp = kpool.clone(), vpool.clone()
    out = ops.paged_attention(q, k, v, kp, vp, slots, tables, torch.tensor(ctx), cos, sin, bs, D ** -0.5)
    qr, kr = _rope_ref(q, cos[:, None], sin[:, None]), _rope_ref(k, cos[:, None], sin[:, None])
    for t, n in enumerate(ctx):
        assert torch.equal(kp[:, slots[t]], kr[t]) and torch.equal(vp[:, slots[t]], v[t])  # rotated k, raw v written
        pos = torch.arange(n)
        idx = tables[t, pos // bs] * bs + pos % bs
        K, V = kp[:, idx], vp[:, idx]  # [Hk, n, D]
        for h in range(H):
            p = torch.softmax((K[h // (H // Hk)] @ qr[t, h]) * D ** -0.5, dim=-1)
            assert torch.allclose(out[t, h * D:(h + 1) * D], p @ V[h // (H // Hk)], rtol=1e-5, atol=1e-5)
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(kp[:, untouched], kpool[:, untouched]) and torch.equal(vp[:, untouched], vpool[:, untouched])
    with pytest.raises(RuntimeError, match="block table"):
        ops.paged_attention(q, k, v, kp, vp, slots, tables, torch.tensor([1, 3, 9, 17, 13]), cos, sin, bs, 0.1)


def _int4_llama(layers: int = 3):
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from sizewise.compression.apply import compress
    from sizewise.compression.recipes import get_recipe

    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=160, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return compress(copy.deepcopy(LlamaForCausalLM(cfg).eval()), get_recipe("int4-g32"))


@needs_ops
def test_decode_stack_is_the_layers_one_call_at_a_time(monkeypatch):
    """One decode_stack call per step gives bit for bit the logits and KV caches of one decode_layer call per
    layer (the lean decoder with and without the stack)."""
    from sizewise.evaluate.generate import make_decoder
    from sizewise.kernels import decode

    model = _int4_llama()
    prompt = torch.randint(0, 160, (2, 9), generator=torch.Generator().manual_seed(3))
    runs = []
    for use_stack in (True, False):
        if not use_stack:
            monkeypatch.setattr(decode, "stack", lambda plans, head_dim: None)
        dec = make_decoder(model, 2, 64)
        with torch.inference_mode():
            tok = dec.forward(prompt).argmax(-1, keepdim=True)
            logits = [dec.forward(tok)]
            logits.append(dec.forward(logits[-1].argmax(-1, keepdim=True)))
        assert (dec._stack is not None) == use_stack and dec._plans is not None
        runs.append((torch.cat(logits), dec.k_cache + dec.v_cache))
    (a, ca), (b, cb) = runs
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(ca, cb))


@needs_ops
def test_decode_stack_refuses_what_does_not_fit():
    from sizewise.kernels import decode

    model = _int4_llama(2)
    L = model.model.layers
    plans = [decode.LayerPlan.build(l.input_layernorm, l.post_attention_layernorm, l.self_attn.q_proj, l.self_attn.k_proj,
                                    l.self_attn.v_proj, l.self_attn.o_proj, l.mlp.gate_proj, l.mlp.up_proj,
                                    l.mlp.down_proj, l.mlp.act_fn, 0.125) for l in L]
    handles = decode.stack(plans, 64)
    assert handles is not None and len(handles) == 2
    pools = [torch.zeros(2, 32, 64) for _ in range(2)]
    h = torch.randn(1, 256)
    args = (torch.tensor([3]), torch.tensor([[0]]), torch.tensor([4]), torch.randn(1, 64), torch.randn(1, 64), 32)
    out = ops.decode_stack(h, handles, pools, [p.clone() for p in pools], *args)
    assert out.shape == h.shape and not torch.equal(out, h)
    with pytest.raises(RuntimeError, match="one K pool and one V pool per layer"):
        ops.decode_stack(h, handles, pools[:1], pools, *args)
    with pytest.raises(RuntimeError, match="KV pool shape"):
        ops.decode_stack(h, handles, [torch.zeros(3, 32, 64)] * 2, pools, *args)
    with pytest.raises(RuntimeError, match="h must be"):
        ops.decode_stack(torch.randn(1, 128), handles, pools, pools, *args)
    with pytest.raises(RuntimeError, match="slot out of range"):
        ops.decode_stack(h, handles, pools, pools, torch.tensor([40]), *args[1:])
    with pytest.raises(RuntimeError, match="head_dim"):
        ops.make_dec_layer(plans[0].n1_w, 1e-6, plans[0].n2_w, 1e-6, *plans[0].whole, 0.125, 60)


@needs_ops
@pytest.mark.parametrize("threads", [1, 2])
def test_stream_read_reads_every_word_once(threads):
    """The bandwidth probe must touch each byte exactly once: its sum is the 64-bit word sum (wrapping)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for nbytes in (8, 256, 4096 * 3 + 72, (1 << 20) + 8):  # tails shorter than one 256-byte step, and none
            t = torch.randint(-(1 << 62), 1 << 62, (nbytes // 8,), dtype=torch.int64)
            assert ops.stream_read(t) == int(t.sum())
            assert ops.stream_read(t.view(torch.uint8)) == int(t.sum())  # any dtype: it reads bytes
    finally:
        torch.set_num_threads(old)
    with pytest.raises(RuntimeError, match="whole number of 8-byte words"):
        ops.stream_read(torch.zeros(12, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.stream_read(torch.zeros(64, 2)[:, 0])
