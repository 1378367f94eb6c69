"""int4-gG-s6: each group's scale and zero as 6-bit codes against three fp16 numbers per row super-block
(quant.fit_int4_sb, packed.Int4SuperBlockLinear, formats "int4-g32-s6")."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import sizewise
from sizewise.arch.inventory import TensorSpec
from sizewise.compression import gptq as G
from sizewise.compression import packed as P
from sizewise.compression import quant as Q
from sizewise.compression.recipes import RECIPES, recipe_from_dict
from sizewise.errors import SizewiseError
from sizewise.size.formats import superblock_groups, tensor_bytes

from comp_helpers import char_tokenizer, tiny_llama


@pytest.mark.parametrize("cols", [1, 4, 18, 37, 48])
def test_6bit_packing_round_trips(cols):
    c = torch.randint(0, 64, (5, cols), dtype=torch.uint8, generator=torch.Generator().manual_seed(cols))
    p = Q.pack_6bit(c)
    assert p.dtype == torch.uint8 and p.shape == (5, -(-cols // 4) * 3)
    assert torch.equal(Q.unpack_6bit(p, cols), c)


def test_superblocks_divide_the_row_and_stay_under_4_5_bits():
    for g in (18, 48, 16, 32, 64, 128, 37, 2):
        s = superblock_groups(g)
        assert g % s == 0 and (s >= 16 or s == g)
    def bits(k):  # one 64-row matrix of row length k, as formats.py prices it
        spec = TensorSpec(name="w", shape=(64, k), copies=1, group="mlp", kind="linear")
        return 8 * tensor_bytes(spec, "int4-g32-s6", tied=False, keep_kinds=()) / (64 * k)
    assert bits(576) <= 4.5 and bits(1536) <= 4.5  # SmolLM2's rows
    assert bits(4096) <= 4.5 and bits(11008) <= 4.5  # Llama-7B's


def _q4_1_grid_weight(n=64, k=576, seed=0):
    """A weight that *is* a Q4_1 g32 grid (what the bundled model's decoder Linears are)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g).float()
    d = torch.rand(n, k // 32, generator=g) * 0.02 + 0.002
    m = -8 * d + (torch.rand(n, k // 32, generator=g) - 0.5) * 0.02
    return (q.reshape(n, k // 32, 32) * d[..., None] + m[..., None]).reshape(n, k)


def _err(w, wq):
    return float((w - wq).pow(2).sum() / w.pow(2).sum())


def test_coded_grid_keeps_a_g32_grid_that_g64_loses():
    w = _q4_1_grid_weight()
    q, cs, cz, sup = Q.fit_int4_sb(w, 32)
    s, z = Q.sb_expand(cs, cz, sup)
    e_s6 = _err(w, Q.dequantize_int4_float(q, s, z, 32))
    s64, z64 = Q.fit_int4_float(w, 64)
    e_g64 = _err(w, Q.dequantize_int4_float(Q.quantize_int4_float_with(w, s64, z64, 64), s64, z64, 64))
    s32, z32 = Q.fit_int4_float(w, 32)
    e_g32 = _err(w, Q.dequantize_int4_float(Q.quantize_int4_float_with(w, s32, z32, 32), s32, z32, 32))
    assert e_s6 < 0.3 * e_g64  # 0.15x here (d spread 10x within a row: coarse codes for the small groups)
    assert e_g32 <= e_s6  # the coded grid can only lose against free bf16 scales...
    assert e_s6 < 1e-3  # ...and loses little


def test_random_weights_lose_little_against_bf16_scales():
    torch.manual_seed(3)
    w = torch.randn(128, 512) * 0.02
    q, cs, cz, sup = Q.fit_int4_sb(w, 32)
    s, z = Q.sb_expand(cs, cz, sup)
    s32, z32 = Q.fit_int4_float(w, 32)
    e_s6 = _err(w, Q.dequantize_int4_float(q, s, z, 32))
    e_g32 = _err(w, Q.dequantize_int4_float(Q.quantize_int4_float_with(w, s32, z32, 32), s32, z32, 32))
    assert e_s6 <= 1.05 * e_g32


def test_module_round_trip_kernel_and_bytes():
    torch.manual_seed(0)
    lin = nn.Linear(576, 64)
    mod = P.Int4SuperBlockLinear.from_float(lin, 32)
    assert mod.scheme == "int4-g32-s6" and ("int4pack" in mod.kernel or "linear_q4" in mod.kernel)
    t = mod.packed_tensors()
    back = P.scheme_class(mod.scheme).from_packed(t, mod.packed_meta(), lin.bias)
    x = torch.randn(5, 576)
    assert torch.equal(back(x), mod(x)) and torch.equal(back.dequantized_weight(), mod.dequantized_weight())
    w = mod.dequantized_weight().double()
    ref = x.double() @ w.t() + lin.bias.double()
    assert ((mod(x).double() - ref).abs() <= 2 * 2.0 ** -8 * (x.abs().double() @ w.abs().t()) + 1e-5).all()
    stored = sum(v.numel() * v.element_size() for k, v in t.items() if k != "weight_shape")
    spec = TensorSpec(name="w", shape=(64, 576), copies=1, group="mlp", kind="linear")
    assert stored == tensor_bytes(spec, "int4-g32-s6", tied=False, keep_kinds=())
    assert stored * 8 / (64 * 576) <= 4.5


def test_gptq_rounds_onto_the_fixed_coded_grid_with_less_output_error():
    torch.manual_seed(1)
    w = torch.randn(64, 256) * 0.02
    x = torch.randn(512, 256) @ (torch.eye(256) + 0.3 * torch.randn(256, 256) / 16)  # correlated inputs
    H = 2 * x.t() @ x / x.shape[0]
    q, cs, cz, sup = Q.fit_int4_sb(w, 32, torch.diag(H))
    s, z = Q.sb_expand(cs, cz, sup)
    qg, sg, zg = G.gptq_quantize_weight(w, H, 32, zero="float", fixed=(s, z))
    assert torch.equal(sg, s) and torch.equal(zg, z)  # the grid stays the coded one

    def out_err(qq):
        return float(((w - Q.dequantize_int4_float(qq, s, z, 32)) @ x.t()).pow(2).sum())
    assert out_err(qg) < out_err(q)


def test_recipe_compresses_saves_and_loads(tmp_path):
    from sizewise.compression.sizing import estimate_bytes
    from sizewise.io.safetensors_scan import scan_safetensors
    m = tiny_llama(seed=2, hidden=128, inter=256)
    ids = torch.randint(0, 128, (1, 24))
    c = sizewise.compress(copy.deepcopy(m), "int4-g32-s6")
    mods = [x for x in c.modules() if isinstance(x, P.Int4SuperBlockLinear)]
    assert len(mods) == 14
    out = tmp_path / "ck"
    sizewise.save(c, char_tokenizer(), out)
    back, _, manifest = sizewise.load(out)
    with torch.inference_mode():
        assert torch.equal(back(ids).logits, c(ids).logits)
    assert {m["scheme"] for m in manifest["modules"].values()} == {"int4-g32-s6"}
    est = estimate_bytes(manifest)
    assert est["unpriced"] == []
    assert abs(scan_safetensors(out).data_bytes - est["estimate"]) <= 16 * 14  # weight_shape tensors only


def test_bad_recipe_fields():
    with pytest.raises(SizewiseError, match="scale_bits"):
        recipe_from_dict({"base": "int4-g32", "scale_bits": 5})
    with pytest.raises(SizewiseError, match="zero 'float'"):
        recipe_from_dict({"base": "int4-ct-g32", "scale_bits": 6})
    assert RECIPES["int4-g32-s6"].scale_bits == 6 and not RECIPES["int4-g32-s6"].needs_calibration
    assert RECIPES["int4-imatrix-g32-s6"].needs_calibration and RECIPES["int4-gptq-g32-s6"].needs_calibration
