"""`sizewise export --to gguf`: block layouts, exact mapping of packed tensors, tokenizer keys, round trip
through transformers' GGUF loader, bad input (tiny models built here; the bundled tokenizer)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

import sizewise
from sizewise.errors import SizewiseError
from sizewise.export import gguf as G


def _field(reader, key):
    return reader.fields[key].contents()


# --- block layouts ---

def test_q8_0_blocks_are_what_gguf_dequantizes():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, size=(4, 64)).astype(np.int8)
    scale = np.array([0.01, 1e-3, 2.0 ** -20, 0.5], dtype=np.float64)  # 2^-20: an fp16 subnormal that rounds
    raw, st = G.q8_0_blocks(q, scale, "t")
    got = quants.dequantize(raw, GGMLQuantizationType.Q8_0)
    want = q.astype(np.float64) * scale.astype(np.float16).astype(np.float64)[:, None]
    assert np.array_equal(got, want.astype(np.float32))
    assert st["blocks"] == 8
    changed = [float(np.float16(s)) != s for s in scale]
    assert st["changed_blocks"] == 2 * sum(changed)


def test_q4_1_blocks_are_what_gguf_dequantizes():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, size=(3, 128))
    d = rng.uniform(0.001, 0.05, size=(3, 2))  # group 64: each group's d, m go into two blocks
    m = rng.uniform(-0.5, 0.5, size=(3, 2))
    raw, st = G.q4_1_blocks(q, d, m, 64, "t")
    got = quants.dequantize(raw, GGMLQuantizationType.Q4_1).astype(np.float64)
    d16, m16 = np.repeat(d.astype(np.float16), 64, 1).astype(np.float64), np.repeat(m.astype(np.float16), 64, 1).astype(np.float64)
    assert np.allclose(got, q * d16 + m16, atol=1e-7, rtol=0)
    exact = q * np.repeat(d, 64, 1) + np.repeat(m, 64, 1)
    assert st["max_abs_change"] == pytest.approx(np.abs(q * d16 + m16 - exact).max(), rel=1e-9)
    assert 0 < st["changed_blocks"] <= st["blocks"] == 12


def test_qk_perm_is_the_converters_permute():
    w = torch.arange(12 * 2).reshape(12, 2)
    n_head = 3
    ref = w.reshape(n_head, 2, 12 // n_head // 2, 2).swapaxes(1, 2).reshape(12, 2)
    assert torch.equal(w[G.qk_perm(12, n_head)], ref)


# --- tiny checkpoints ---

@pytest.fixture(scope="module")
def tiny_ckpts(tiny_model_dir, tmp_path_factory):
    """int4-g64 (float zero), int4-ct-g32 (integer zero), int8-wo and int8-static checkpoints of the tiny llama."""
    from sizewise.io.model_load import load_model

    d = tmp_path_factory.mktemp("tiny-ckpts")
    out = {}
    for r in ("int4-g64", "int4-ct-g32", "int4-g32-s6", "int8-wo", "int8-static"):
        lm = load_model(str(tiny_model_dir))
        calib = torch.randint(0, 1000, (2, 32)) if r == "int8-static" else None
        m = sizewise.compress(lm.model, r, calib_tokens=calib)
        sizewise.save(m, lm.tokenizer, d / r, parent=tiny_model_dir)
        out[r] = d / r
    return out


@pytest.mark.parametrize("recipe,ggml", [("int4-g64", "Q4_1"), ("int4-ct-g32", "Q4_1"), ("int4-g32-s6", "Q4_1"),
                                         ("int8-wo", "Q8_0")])
def test_packed_tensors_carry_over_exactly(tiny_ckpts, tmp_path, recipe, ggml):
    from sizewise.io.model_load import load_model

    out = tmp_path / "m.gguf"
    rep = G.export(str(tiny_ckpts[recipe]), out, measure_tokens=0)
    assert rep["requantized"] == [] and rep["types"][ggml] == 14  # 7 Linears x 2 layers
    model = load_model(str(tiny_ckpts[recipe])).model
    reader = GGUFReader(str(out))
    by = {t.name: t for t in reader.tensors}
    fr = rep["fp16_rounding"]
    worst = 0.0
    for i in range(2):
        for hf, gn in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("mlp.down_proj", "ffn_down")):
            t = by[f"blk.{i}.{gn}.weight"]
            assert t.tensor_type.name == ggml
            vals = quants.dequantize(t.data, t.tensor_type)
            if gn in ("attn_q", "attn_k"):  # undo the rotary row permutation
                n = 4 if gn == "attn_q" else 2
                perm = G.qk_perm(vals.shape[0], n)
                inv = np.empty_like(perm)
                inv[perm] = np.arange(perm.size)
                vals = vals[inv]
            want = model.get_submodule(f"model.layers.{i}.{hf}").dequantized_weight().double().numpy()
            worst = max(worst, float(np.abs(vals - want).max()))
    assert worst <= fr["max_abs_change"] + 1e-6  # every difference is the reported fp16 rounding
    meta = json.loads(_field(reader, "sizewise.export"))
    assert meta["fp16_rounding"]["blocks_changed"] == fr["blocks_changed"]
    assert meta["exact"] == rep["exact"] and len(rep["exact"]) == len(reader.tensors)


def test_export_loads_back_with_the_checkpoints_values(tiny_ckpts, tmp_path):
    """transformers' GGUF loader (sizewise load_model) reads the export; its logits equal the checkpoint's
    values in fp32 up to the fp16 rounding the report measured (its kld_vs_src)."""
    from sizewise.export import common
    from sizewise.io.model_load import load_model

    out = tmp_path / "m.gguf"
    rep = G.export(str(tiny_ckpts["int4-g64"]), out, measure_tokens=64)
    assert rep["measure"]["tokens"] == 64 and rep["kld_vs_src"] < 1e-4
    ck = load_model(str(tiny_ckpts["int4-g64"])).model
    ref = common.fp32_model(ck.config, common.fp32_state_dict(ck))
    back = load_model(str(out))
    assert back.kind == "gguf"
    ids = torch.tensor([[5, 900, 31, 2048, 77, 12, 400, 9]])
    with torch.inference_mode():
        a, b = ref(input_ids=ids).logits, back.model(input_ids=ids).logits
    assert (a - b).abs().max().item() < 1e-3
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_tokenizer_keys_match_the_bundled_gguf(tiny_ckpts, tmp_path, bundled_path):
    out = tmp_path / "m.gguf"
    G.export(str(tiny_ckpts["int8-wo"]), out, measure_tokens=0)
    mine, ref = GGUFReader(str(out)), GGUFReader(str(bundled_path))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.chat_template"):
        assert _field(mine, key) == _field(ref, key), key
    assert _field(mine, "llama.rope.dimension_count") == 16 and _field(mine, "llama.attention.head_count_kv") == 2


def test_requantize_needs_the_flag_and_is_measured(tiny_ckpts, tmp_path):
    out = tmp_path / "s.gguf"
    with pytest.raises(SizewiseError, match="--allow-requantize") as e:
        G.export(str(tiny_ckpts["int8-static"]), out)
    assert "int8-static" in str(e.value) and not out.exists()
    rep = G.export(str(tiny_ckpts["int8-static"]), out, allow_requantize=True, measure_tokens=64)
    assert len(rep["requantized"]) == 14 and {r["to"] for r in rep["requantized"]} == {"Q8_0"}
    assert rep["kld_vs_src"] is not None and rep["kld_vs_src"] >= 0


def test_float_source_as_stored_and_with_type(tiny_model_dir, tmp_path):
    rep = G.export(str(tiny_model_dir), tmp_path / "f.gguf", measure_tokens=0)
    assert rep["types"] == {"F32": 2 * 9 + 2} and rep["kld_vs_src"] is None and rep["requantized"] == []
    rep = G.export(str(tiny_model_dir), tmp_path / "q.gguf", type_="Q8_0", measure_tokens=32)
    assert rep["types"]["Q8_0"] == 15 and len(rep["requantized"]) == 15  # 14 Linears + token table
    assert rep["kld_vs_src"] is not None
    assert abs(rep["estimate"]["deviation"]) < 0.02


def test_gguf_source_is_copied_exactly(bundled_path, tmp_path):
    out = tmp_path / "copy.gguf"
    rep = G.export("bundled", out)
    assert rep["requantized"] == [] and rep["kld_vs_src"] is None and len(rep["exact"]) == 272
    a, b = GGUFReader(str(bundled_path)), GGUFReader(str(out))
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and ta.tensor_type == tb.tensor_type and np.array_equal(ta.data, tb.data)
    assert _field(b, "tokenizer.chat_template") == _field(a, "tokenizer.chat_template")
    assert json.loads(_field(b, "sizewise.export"))["source"]["kind"] == "gguf"


# --- bad input: one error line, exit 2, nothing written ---

def _cli(args):
    from typer.testing import CliRunner

    from sizewise.cli import app
    return CliRunner().invoke(app, ["export", *args])


def _only(d, names):
    assert sorted(p.name for p in d.iterdir()) == sorted(names)  # no temp file left behind


def test_cli_unknown_type_lists_valid(tmp_path):
    r = _cli(["bundled", "--to", "gguf", "--out", str(tmp_path / "x.gguf"), "--type", "Q4_K_M"])
    assert r.exit_code == 2 and "Q4_K_M" in r.output and "Q8_0, Q4_0, Q4_1" in r.output
    _only(tmp_path, [])


def test_cli_existing_out_needs_force(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"old")
    r = _cli(["bundled", "--to", "gguf", "--out", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "--force" in r.output
    assert (tmp_path / "x.gguf").read_bytes() == b"old"


def test_cli_requantize_error(tiny_ckpts, tmp_path):
    r = _cli([str(tiny_ckpts["int8-static"]), "--to", "gguf", "--out", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "error:" in r.output and "--allow-requantize" in r.output
    _only(tmp_path, [])


def test_unmapped_architecture(tiny_model_dir, tmp_path):
    d = tmp_path / "phi"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "phi3"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SizewiseError, match="'phi3'"):
        G.export(str(d), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_missing_tokenizer(tiny_model_dir, tmp_path):
    d = tmp_path / "notok"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, d / f)
    with pytest.raises(SizewiseError, match="no tokenizer"):
        G.export(str(d), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_truncated_gguf_source(bundled_path, tmp_path):
    src = tmp_path / "cut.gguf"
    with open(bundled_path, "rb") as f:
        src.write_bytes(f.read(40_000_000))
    r = _cli([str(src), "--to", "gguf", "--out", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "truncated" in r.output and len(r.output.strip().splitlines()) == 1
    _only(tmp_path, ["cut.gguf"])


def test_corrupt_checkpoint(tiny_ckpts, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(tiny_ckpts["int8-wo"], d)
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(SizewiseError, match="corrupt or truncated"):
        G.export(str(d), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_bpe_pre_names_a_new_vocabulary_behind_gpt2_splitting_and_refuses_others():
    """The converter's fingerprint hashes ids, so a new vocabulary never matches it; plain ByteLevel
    splitting is still unambiguous ("gpt-2"), anything else is refused rather than guessed."""
    import sys
    from pathlib import Path
    from tokenizers import pre_tokenizers
    from sizewise.export.gguf import bpe_pre
    sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
    import crash_harness
    tok = crash_harness.byte_tokenizer()
    assert bpe_pre(tok) == "gpt-2"
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(SizewiseError, match="not recognised"):
        bpe_pre(tok)
