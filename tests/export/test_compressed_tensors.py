"""`sizewise export --to vllm`: compressed-tensors' own ModelCompressor decompresses every module to the
weights sizewise dequantizes (bit for bit), transformers loads and runs the export, float-zero int4 is
refused or refitted and measured, bad input is one line (tiny llamas and a character tokenizer built here)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from sizewise.errors import SizewiseError
from sizewise.export import compressed_tensors as CT
from tests.export import ct_helpers as H

EXACT_RECIPES = ("int4-ct-g32", "int8-dyn", "int8-wo")
LINEARS = 14  # 7 per layer x 2 layers


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct-ckpts")
    return {r: H.sizewise_checkpoint(d / r, r) for r in (*EXACT_RECIPES, "int4-g64")}


@pytest.fixture(scope="module")
def exports(ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("ct-exports")
    return {r: (d / r, CT.export(str(ckpts[r]), d / r, measure_tokens=0)) for r in EXACT_RECIPES}


def _packed(model) -> dict:
    return {n: m for n, m in model.named_modules() if hasattr(m, "dequantized_weight")}


def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(p.name.encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _decompress_with_compressed_tensors(out: Path, dtype: torch.dtype):
    """What compressed-tensors itself makes of the export: a skeleton from config.json with the
    quantization_config applied and compressed, the safetensors loaded strictly, then decompressed."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, CompressedTensorsConfig

    raw = json.loads((out / "config.json").read_text())
    mc = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(raw["quantization_config"]))
    cfg = AutoConfig.from_pretrained(out)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    apply_quantization_config(model, mc.quantization_config)
    mc.compress_model(model)
    sd = load_file(str(out / "model.safetensors"))
    res = model.load_state_dict(sd, strict=False)
    assert res.unexpected_keys == [] and [k for k in res.missing_keys if k != "lm_head.weight"] == []
    mc.decompress_model(model)
    return model


@pytest.mark.parametrize("recipe", EXACT_RECIPES)
def test_compressed_tensors_decompresses_to_sizewise_weights(ckpts, exports, recipe):
    from sizewise.io.model_load import load_model

    out, rep = exports[recipe]
    assert rep["requantized"] == [] and rep["kld_vs_src"] is None
    assert sum(s["modules"] for s in rep["schemes"].values()) == LINEARS
    sw = _packed(load_model(str(ckpts[recipe])).model)
    assert len(sw) == LINEARS and all(f"{n}.weight" in rep["exact"] for n in sw)
    stored = getattr(torch, json.loads((out / "config.json").read_text())["dtype"])
    for dtype in {torch.float32, stored}:  # fp32 holds q*scale exactly; the stored dtype is what loaders use
        ct = _decompress_with_compressed_tensors(out, dtype)
        for name, m in sw.items():
            got = ct.get_submodule(name).weight
            assert got.dtype == dtype
            assert torch.equal(got, m.dequantized_weight().to(dtype)), (recipe, name, dtype)


@pytest.mark.parametrize("recipe", EXACT_RECIPES)
def test_transformers_loads_and_runs_the_export(ckpts, exports, recipe):
    """`AutoModelForCausalLM.from_pretrained(out)` runs; its logits against sizewise's:
    pack-quantized (int4, int8-wo): transformers decompresses each layer in bf16 and runs it dense, so the
    reference is sizewise's dequantized weights in an fp32 model: max |diff| <= 2e-3 (measured 1.1e-3 /
    1.2e-3) and under half of what quantization itself moved the logits (0.053 / 0.0052);
    int8-dyn: transformers runs bf16 with fake-quantized activations, sizewise runs torch._int_mm:
    max |diff| <= 0.02 (measured 0.0078, one bf16 step at these logits), same argmax everywhere."""
    from transformers import AutoModelForCausalLM

    from sizewise.export import common
    from sizewise.io.model_load import load_model

    out, _ = exports[recipe]
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    sw = load_model(str(ckpts[recipe])).model
    ids = H.ids(48)
    with torch.inference_mode():
        a = hf(input_ids=ids).logits.float()
        if recipe == "int8-dyn":
            b = sw(input_ids=ids).logits.float()
            assert (a - b).abs().max().item() <= 0.02
            assert torch.equal(a.argmax(-1), b.argmax(-1))
            return
        dense = common.fp32_model(sw.config, common.fp32_state_dict(sw))(input_ids=ids).logits
        orig = H.tiny_llama(0)(input_ids=ids).logits
    diff = (a - dense).abs().max().item()
    assert diff <= 2e-3 and diff < 0.5 * (orig - dense).abs().max().item()


def test_int8_packing_is_compressed_tensors_packing():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from sizewise.compression import quant as Q

    q = torch.randint(-128, 128, (6, 32), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    mine = Q.pack_int8_to_int32(q)
    assert torch.equal(mine, pack_to_int32(q, 8, packed_dim=1))
    assert torch.equal(Q.unpack_int32_to_int8(mine, 32), q)


def test_config_is_what_compressed_tensors_reads(exports):
    from compressed_tensors.quantization import QuantizationConfig

    for recipe, fmt in (("int4-ct-g32", "pack-quantized"), ("int8-dyn", "int-quantized"), ("int8-wo", "pack-quantized")):
        out, rep = exports[recipe]
        raw = json.loads((out / "config.json").read_text())
        qc = QuantizationConfig.model_validate(raw["quantization_config"])
        assert qc.format == fmt and rep["format"] == fmt and "sizewise_schemes" not in raw["quantization_config"]
        (group,) = qc.config_groups.values()
        assert len(group.targets) == LINEARS and raw["architectures"] == ["LlamaForCausalLM"]
        if recipe == "int8-dyn":
            assert group.input_activations.dynamic and group.input_activations.strategy == "token"
        else:
            assert group.input_activations is None
        meta = json.loads((out / "sizewise.json").read_text())
        assert meta["export"]["exact"] == rep["exact"]  # the report is in the output's own metadata


# --- float-zero int4: no exact target ---

def test_float_zero_int4_is_refused_naming_the_ct_recipe(ckpts, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(SizewiseError, match="int4-ct-g64") as e:
        CT.export(str(ckpts["int4-g64"]), out)
    assert "--allow-requantize" in str(e.value) and not out.exists()
    r = _cli([str(ckpts["int4-g64"]), "--to", "vllm", "--out", str(out)])
    assert r.exit_code == 2 and r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_refit_is_measured_and_reported(ckpts, tmp_path):
    from sizewise.io.model_load import load_model

    before = _tree_digest(ckpts["int4-g64"])
    out = tmp_path / "refit"
    rep = CT.export(str(ckpts["int4-g64"]), out, allow_requantize=True, measure_tokens=256)
    assert _tree_digest(ckpts["int4-g64"]) == before  # the input is never touched
    assert len(rep["requantized"]) == LINEARS and {q["to"] for q in rep["requantized"]} == {"int4-g64-asym"}
    assert rep["kld_vs_src"] is not None and 0 < rep["kld_vs_src"] < 0.05
    assert rep["measured_on"]["predicted"] == 255
    assert json.loads((out / "sizewise.json").read_text())["export"]["kld_vs_src"] == rep["kld_vs_src"]
    # what compressed-tensors decompresses is what sizewise loads from the export
    sw = _packed(load_model(str(out)).model)
    ct = _decompress_with_compressed_tensors(out, torch.float32)
    for name, m in sw.items():
        assert torch.equal(ct.get_submodule(name).weight, m.dequantized_weight())


def test_refit_integer_zero_is_no_worse_than_a_fresh_grid():
    """Per group the refit keeps the better of (same scale, rounded zero) and a fresh min/max grid, so its
    error against the float-zero weights is never above the fresh grid's, and its codes stay in 0..15."""
    from sizewise.compression import quant as Q

    torch.manual_seed(0)
    w = torch.randn(16, 128)
    scale, zero = Q.fit_int4_float(w, 32)
    wf = Q.dequantize_int4_float(Q.quantize_int4_float_with(w, scale, zero, 32), scale, zero, 32)
    q, s, zp = CT.refit_integer_zero(wf, scale, zero, 32)
    assert zp.dtype == torch.int32 and 0 <= int(zp.min()) and int(zp.max()) <= 15
    assert 0 <= int(q.min()) and int(q.max()) <= 15

    def err(q, s, zp):
        return (Q.group_dequantize_int4(q, s, zp, 32) - wf).pow(2).reshape(16, 4, 32).sum(-1)
    s_b, zp_b = Q.group_qparams_int4(wf, 32)
    mine, fresh = err(q, s, zp), err(Q.quantize_int4_with(wf, s_b, zp_b, 32), s_b, zp_b)
    assert bool((mine <= fresh).all()) and float(mine.sum()) < float(fresh.sum())  # the rounded zero wins somewhere


# --- GPTQ act-order ---

def test_gptq_act_order_exports_without_g_idx(tmp_path):
    """sizewise's GPTQ keeps static groups and stores integers in the original column order: exact,
    no g_idx, and compressed-tensors decompresses it to sizewise's weights."""
    from sizewise.io.model_load import load_model

    d = H.sizewise_checkpoint(tmp_path / "gptq", {"base": "int4-ct-g32", "method": "gptq", "act_order": True})
    out = tmp_path / "gptq-ct"
    rep = CT.export(str(d), out, measure_tokens=0)
    assert rep["requantized"] == [] and any("g_idx" in n for n in rep["notes"])
    from safetensors.torch import load_file
    assert not any(k.endswith("g_idx") for k in load_file(str(out / "model.safetensors")))
    raw = json.loads((out / "config.json").read_text())
    assert all(g["weights"].get("actorder") in (None, False) for g in raw["quantization_config"]["config_groups"].values())
    sw = _packed(load_model(str(d)).model)
    ct = _decompress_with_compressed_tensors(out, torch.float32)
    for name, m in sw.items():
        assert torch.equal(ct.get_submodule(name).weight, m.dequantized_weight())


# --- bad input: one error line, exit 2, nothing written, input untouched ---

def _cli(args):
    from typer.testing import CliRunner

    from sizewise.cli import app
    return CliRunner().invoke(app, ["export", *args, "--no-record"])


def _one_error(r) -> None:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output


def test_cli_unknown_type(ckpts, tmp_path):
    r = _cli([str(ckpts["int8-wo"]), "--to", "vllm", "--out", str(tmp_path / "x"), "--type", "int3"])
    _one_error(r)
    assert "fp32, fp16, bf16" in r.output and list(tmp_path.iterdir()) == []


def test_cli_existing_out_needs_force(ckpts, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("old")
    r = _cli([str(ckpts["int8-wo"]), "--to", "vllm", "--out", str(tmp_path / "x")])
    _one_error(r)
    assert "--force" in r.output and (tmp_path / "x" / "keep").read_text() == "old"
    r = _cli([str(ckpts["int8-wo"]), "--to", "vllm", "--out", str(tmp_path / "x"), "--force", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["format"] == "pack-quantized"
    assert not (tmp_path / "x" / "keep").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_cli_truncated_source(ckpts, tmp_path):
    d = tmp_path / "cut"
    shutil.copytree(ckpts["int4-ct-g32"], d)
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    before = _tree_digest(d)
    r = _cli([str(d), "--to", "vllm", "--out", str(tmp_path / "x")])
    _one_error(r)
    assert _tree_digest(d) == before and sorted(p.name for p in tmp_path.iterdir()) == ["cut"]


def test_cli_corrupt_config(ckpts, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(ckpts["int8-wo"], d)
    (d / "config.json").write_text("{not json")
    r = _cli([str(d), "--to", "vllm", "--out", str(tmp_path / "x")])
    _one_error(r)
    assert not (tmp_path / "x").exists()


def test_cli_missing_tokenizer(ckpts, tmp_path):
    d = tmp_path / "notok"
    shutil.copytree(ckpts["int8-wo"], d)
    for f in d.glob("tokenizer*"):
        f.unlink()
    r = _cli([str(d), "--to", "vllm", "--out", str(tmp_path / "x")])
    _one_error(r)
    assert "no tokenizer" in r.output and not (tmp_path / "x").exists()


def test_cli_unsupported_architecture(ckpts, tmp_path):
    d = tmp_path / "odd"
    shutil.copytree(ckpts["int8-wo"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "sizewise-odd", ["OddForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    r = _cli([str(d), "--to", "vllm", "--out", str(tmp_path / "x")])
    _one_error(r)
    assert "OddForCausalLM" in r.output and not (tmp_path / "x").exists()


def test_int8_wo_export_is_the_same_integers_and_loads_back(ckpts, exports):
    """int8-wo is re-containered (pack-quantized, 8 bits) for vLLM's W8A16 path, not re-quantized:
    sizewise loads the export back to the checkpoint's integers and scales, and the report says why
    vLLM's CPU build cannot run it."""
    from sizewise.compression.sizing import scheme_format
    from sizewise.io.model_load import load_model

    out, rep = exports["int8-wo"]
    assert list(rep["schemes"]) == ["int8-wo-pack"] and scheme_format("int8-wo-pack") == "int8"
    assert any("CPU" in n and "int8-dyn" in n for n in rep["notes"])
    a, b = _packed(load_model(str(ckpts["int8-wo"])).model), _packed(load_model(str(out)).model)
    for name, m in a.items():
        assert torch.equal(b[name].weight, m.weight) and torch.equal(b[name].weight_scale, m.weight_scale)


def test_gguf_source_exports_as_a_dense_checkpoint(tiny_model_dir, tmp_path):
    """A GGUF source (what `bench-serve --peer vllm` converts for `bundled`): transformers marks the loaded model
    as GGUF-quantized and refuses to save it; the export must drop that mark and carry the dequantized values."""
    from sizewise.export import gguf as G
    from sizewise.io.model_load import load_model

    G.export(str(tiny_model_dir), tmp_path / "t.gguf", measure_tokens=0)
    rep = CT.export(str(tmp_path / "t.gguf"), tmp_path / "out", measure_tokens=0)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in cfg and rep["format"] == "dense" and rep["requantized"] == []
    src = load_model(str(tmp_path / "t.gguf")).model.state_dict()
    got = load_model(str(tmp_path / "out")).model.state_dict()
    assert src.keys() == got.keys() and all(torch.equal(src[k], got[k]) for k in src)
