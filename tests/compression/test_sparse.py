"""Packed sparse modules: exact reproduction, bytes that match the formula, save -> load identity."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sizewise.compression.prune import mask_from_scores, parse_pattern
from sizewise.compression.sparse import (SparseLinear, expected_nbytes, nm_positions, nm_rank, nm_unrank,
                                         pack_bits, packed_nbytes, pattern_bits, unpack_bits)


def _pruned_linear(spec: str, rows=48, cols=128, seed=0, fp16_exact=True):
    torch.manual_seed(seed)
    lin = nn.Linear(cols, rows)
    pat = parse_pattern(spec)
    mask = mask_from_scores(lin.weight.detach().abs(), pat, "row")
    with torch.no_grad():
        w = lin.weight.half().float() if fp16_exact else lin.weight.clone()
        lin.weight.copy_(w * mask)
    return lin, mask, pat


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 14])
def test_bit_packing_roundtrip_and_size(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randint(0, 2 ** bits, (37,), generator=g)
    p = pack_bits(x, bits)
    assert p.dtype == torch.uint8 and p.numel() == math.ceil(37 * bits / 8)
    assert torch.equal(unpack_bits(p, bits, 37), x)


@pytest.mark.parametrize("spec", ["0.5", "0.8", "2:4", "4:8"])
def test_fp16_packed_reproduces_masked_dense_exactly(spec, tmp_path):
    lin, mask, pat = _pruned_linear(spec)
    packed = SparseLinear.from_float(lin, mask, "fp16", pat.n, pat.m)
    x = torch.randn(5, 128)
    assert torch.equal(packed(x), lin(x))
    # through a real safetensors file
    f = tmp_path / "t.safetensors"
    save_file(packed.packed_tensors(), str(f))
    again = SparseLinear.from_packed(load_file(str(f)), packed.packed_meta(), lin.bias.detach())
    assert torch.equal(again(x), lin(x))
    assert torch.equal(again.mask, mask)


@pytest.mark.parametrize("spec", ["0.5", "0.7", "2:4", "4:8"])
@pytest.mark.parametrize("vf,g", [("fp16", 128), ("int8", 128), ("int4", 64), ("int4", 32)])
def test_packed_bytes_match_formula(spec, vf, g):
    lin, mask, pat = _pruned_linear(spec)
    packed = SparseLinear.from_float(lin, mask, vf, pat.n, pat.m, group_size=g)
    nnz = int(mask.sum())
    layout = "nm" if pat.is_nm else "bitmask"
    assert packed_nbytes(packed) == expected_nbytes(48, 128, nnz, layout, vf, pat.n, pat.m, g)
    dense_fp16 = 48 * 128 * 2
    if spec in ("0.5", "2:4") and vf == "fp16":
        assert packed_nbytes(packed) / dense_fp16 <= 0.5625 + 1e-9  # 0.5 values + 1/16 index
    if spec == "2:4" and vf == "int4" and g == 64:
        assert packed_nbytes(packed) / dense_fp16 <= 0.2  # the 2:4 int4 target


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (4, 8), (3, 7), (8, 16)])
def test_nm_pattern_rank_is_a_bijection(n, m):
    """Every kept-position set of an N:M group gets its own rank < C(M, N), and unranks back."""
    import itertools
    combos = torch.tensor(list(itertools.combinations(range(m), n)))  # ascending positions
    ranks = nm_rank(combos, m)
    assert sorted(ranks.tolist()) == list(range(math.comb(m, n)))
    assert torch.equal(nm_unrank(ranks, n, m), combos)
    assert 2 ** pattern_bits(n, m) >= math.comb(m, n) > 2 ** (pattern_bits(n, m) - 1)


def test_nm_pattern_survives_packing():
    lin, mask, pat = _pruned_linear("4:8", rows=16, cols=64)
    pos = nm_positions(mask, 4, 8)
    packed = pack_bits(nm_rank(pos, 8), 7)
    assert packed.numel() == math.ceil(16 * 8 * 7 / 8)
    assert torch.equal(nm_unrank(unpack_bits(packed, 7, 16 * 8).reshape(16, 8), 4, 8), pos)


@pytest.mark.parametrize("spec", ["0.5", "2:4"])
@pytest.mark.parametrize("vf", ["int8", "int4"])
def test_int_values_roundtrip_identically(spec, vf):
    lin, mask, pat = _pruned_linear(spec, rows=64)
    packed = SparseLinear.from_float(lin, mask, vf, pat.n, pat.m, group_size=32)
    again = SparseLinear.from_packed(packed.packed_tensors(), packed.packed_meta(), lin.bias.detach())
    x = torch.randn(3, 128)
    assert torch.equal(again(x), packed(x))
    wq = packed.dequantized_weight()
    assert (wq[~mask] == 0).all()
    # quantization error is bounded by the grid: relative error well under 10 %
    assert float((wq - lin.weight.detach()).norm() / lin.weight.detach().norm()) < 0.1
    assert "no sparse speedup" in packed.kernel


def test_csr_path_matches_dense():
    lin, mask, pat = _pruned_linear("0.8")
    packed = SparseLinear.from_float(lin, mask, "fp16")
    x = torch.randn(4, 128)
    y = packed(x)
    packed.use_csr()
    assert packed.kernel.startswith("torch.sparse CSR")
    torch.testing.assert_close(packed(x), y, rtol=1e-5, atol=1e-5)


def test_nm_layout_rejects_a_mask_that_is_not_nm():
    lin, mask, pat = _pruned_linear("0.5")
    with pytest.raises(ValueError, match="2:4"):
        SparseLinear.from_float(lin, mask, "fp16", 2, 4)


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("spec,recipe", [("2:4", None), ("0.5", "int4-g32"), ("4:8", "int8-wo")])
def test_checkpoint_save_load_gives_identical_logits(spec, recipe, tmp_path):
    from sizewise.commands.prune import apply_prune_options
    from sizewise.compression.checkpoint import load_compressed, save_compressed

    model = _tiny()
    opts = {"prune": "magnitude", "sparsity": spec, "recipe": recipe}
    apply_prune_options(model, None, opts)
    assert model.sizewise_prune["measured_sparsity"] == pytest.approx(0.5)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).logits
    man = save_compressed(model, None, tmp_path / "out", {"prune": model.sizewise_prune}, None)
    loaded, _tok, manifest = load_compressed(tmp_path / "out")
    with torch.no_grad():
        got = loaded(x).logits
    assert torch.equal(got, ref)
    schemes = {m["scheme"] for m in manifest["modules"].values()}
    assert all(s.startswith("sparse-") for s in schemes)
    # the packed layers really are smaller on disk than the dense fp16 ones would be
    assert man["bytes_on_disk"] > 0


def test_joint_sparsegpt_int4_is_what_gets_saved(tmp_path):
    """--prune sparsegpt --recipe int4-gN: the SparseGPT grid is stored, reloads to the same weights."""
    from sizewise.commands.prune import apply_prune_options
    from sizewise.compression.checkpoint import load_compressed, save_compressed

    model = _tiny()
    calib = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(1))
    import sizewise.commands.prune as cp
    orig = cp._train_tokens
    cp._train_tokens = lambda tok, opts, n, seq: calib
    try:
        apply_prune_options(model, None, {"prune": "sparsegpt", "sparsity": "2:4", "recipe": "int4-g32"})
    finally:
        cp._train_tokens = orig
    assert model.sizewise_prune["joint_int4"] is True
    mods = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert len(mods) == 14 and all(m.values_format == "int4" for m in mods.values())
    save_compressed(model, None, tmp_path / "j", None, None)
    loaded, _, _ = load_compressed(tmp_path / "j")
    lmods = dict(loaded.named_modules())
    for n, m in mods.items():
        assert torch.equal(lmods[n].dequantized_weight(), m.dequantized_weight())


@pytest.mark.parametrize("opts,match", [
    ({"prune": "magnitude", "sparsity": "1.0"}, "outside"),
    ({"prune": "magnitude", "sparsity": "4:2"}, "N:M"),
    ({"prune": "magnitude", "sparsity": "3:5"}, "divide"),
    ({"prune": "magnitude", "sparsity": "0.5", "recipe": "int8-static"}, "cannot be combined"),
    ({"prune": "magnitude", "sparsity": "2:4", "schedule": "progressive"}, "N:M"),
    ({"prune": "bogus", "sparsity": "0.5"}, "unknown"),
    ({"prune": "magnitude"}, "--sparsity"),
    ({"prune": "magnitude", "sparsity": "0.5", "train_file": "/nonexistent/train.txt"}, "not found"),
    ({"prune": "magnitude", "sparsity": "0.5", "steps": -1}, "steps"),
    ({"prune": "magnitude", "sparsity": "0.5", "steps": 2, "kd": 2.0}, "kd"),
])
def test_bad_prune_options_are_user_errors(opts, match):
    from sizewise.commands.prune import apply_prune_options
    from sizewise.errors import SizewiseError
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SizewiseError, match=match):
        apply_prune_options(model, None, opts)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing pruned on bad input


def test_int4_group_falls_back_like_the_core():
    from sizewise.compression.sparse import int4_group_for
    assert int4_group_for(576, 128) == 64  # SmolLM2 hidden size: 128 does not divide it
    assert int4_group_for(1536, 128) == 128
    assert int4_group_for(96, 64) == 32
    with pytest.raises(ValueError):
        int4_group_for(100, 64)


def test_fresh_process_reloads_a_pruned_checkpoint(tmp_path):
    """A new interpreter that imports only the public API must find the sparse schemes itself."""
    import subprocess
    import sys

    from sizewise.commands.prune import apply_prune_options
    from sizewise.compression.checkpoint import save_compressed

    model = _tiny()
    apply_prune_options(model, None, {"prune": "magnitude", "sparsity": "2:4"})
    x = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        ref = model(x).logits
    save_compressed(model, None, tmp_path / "out", {"prune": model.sizewise_prune}, None)
    from safetensors.torch import save_file
    save_file({"ref": ref.contiguous()}, str(tmp_path / "ref.safetensors"))
    code = (
        "import sys, torch, sizewise\n"
        "from safetensors.torch import load_file\n"
        f"m, _, _ = sizewise.load({str(tmp_path / 'out')!r})\n"
        f"ref = load_file({str(tmp_path / 'ref.safetensors')!r})['ref']\n"
        "with torch.no_grad():\n"
        "    got = m(torch.arange(16).reshape(1, 16)).logits\n"
        "sys.exit(0 if torch.equal(got, ref) else 3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_corrupt_nm_pattern_is_refused():
    lin, mask, pat = _pruned_linear("2:4", rows=8, cols=16)
    packed = SparseLinear.from_float(lin, mask, "fp16", pat.n, pat.m)
    t = packed.packed_tensors()
    t["pattern"] = torch.full_like(t["pattern"], 0xFF)  # every 3-bit rank = 7 >= C(4, 2) = 6
    with pytest.raises(ValueError, match="corrupt 2:4 pattern"):
        SparseLinear.from_packed(t, packed.packed_meta(), None)
