"""`sizewise compress` end to end on a tiny HF directory: success paths and one-line refusals (exit 2)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sizewise.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["compress", *map(str, args)])


def test_unknown_recipe_lists_valid_ones(tiny_hf_dir, tmp_path):
    r = run(tiny_hf_dir, "--recipe", "int3", "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "unknown recipe 'int3'" in r.output and "int4-gptq-g128" in r.output and "int8-static" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_out_equal_to_input_refused(tiny_hf_dir):
    before = sorted(p.name for p in tiny_hf_dir.iterdir())
    r = run(tiny_hf_dir, "--recipe", "int4-g64", "--out", tiny_hf_dir, "--force")
    assert r.exit_code == 2 and "overwrite the input" in r.output
    assert sorted(p.name for p in tiny_hf_dir.iterdir()) == before


def test_existing_out_refused(tiny_hf_dir, tmp_path):
    (tmp_path / "o").mkdir()
    r = run(tiny_hf_dir, "--recipe", "int4-g64", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--force" in r.output


def test_streaming_compress_reports_size_next_to_estimate(tiny_hf_dir, tmp_path):
    r = run(tiny_hf_dir, "--recipe", "int4-g128", "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["streamed"] is True
    assert s["schemes"] == {"int4-g64-fz": 12, "int4-g128-fz": 2}  # hidden 192 falls back, down_proj keeps g128
    assert abs(s["data_vs_layout_estimate"]) < 0.001  # same tensors, same bytes; headers excluded
    assert s["estimate_bytes"] == s["estimate_layout_bytes"]  # formats.py prices the layout we write
    assert (tmp_path / "o" / "sizewise.json").is_file()
    assert "model.layers.0.self_attn.q_proj" in s["fallbacks"]


def test_int8_static_calibrates_on_text_after_eval_tokens(tiny_hf_dir, tmp_path):
    r = run(tiny_hf_dir, "--recipe", "int8-static", "--out", tmp_path / "o", "--calib-tokens", 512, "--json")
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "o" / "sizewise.json").read_text())
    assert man["calibration"]["tokens"] == 512 and man["calibration"]["strategy"] == "tensor"
    assert "16384" in man["calibration_source"]["tokens_from"]
    assert all(m["scheme"] == "int8-static" for m in man["modules"].values())


def test_calibration_text_too_short(tiny_hf_dir, tmp_path):
    short = tmp_path / "calib.txt"
    short.write_text("too short")
    r = run(tiny_hf_dir, "--recipe", "int4-gptq-g64", "--out", tmp_path / "o", "--calib-file", short)
    assert r.exit_code == 2 and "has 9 tokens, the recipe needs" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
    long = tmp_path / "long.txt"
    long.write_text("calibration text " * 300)  # 5100 characters = tokens with this tokenizer
    r = run(tiny_hf_dir, "--recipe", "int4-gptq-g64", "--out", tmp_path / "o", "--calib-file", long,
            "--calib-tokens", 512, "--json")
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "o" / "sizewise.json").read_text())
    assert man["calibration"]["tokens"] == 512 and man["calibration"]["method"] == "gptq"


def test_recipe_file(tiny_hf_dir, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("base: int4-g64\nexclude: 'lm_head|embed|norm|down_proj'\n")
    r = run(tiny_hf_dir, "--recipe", f, "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["schemes"] == {"int4-g64-fz": 12}


@pytest.mark.parametrize("recipe", ["int4-g64", "int8-static"])  # streaming and in-memory paths
def test_truncated_input_is_one_line(tiny_hf_dir, tmp_path, recipe):
    shard = sorted(tiny_hf_dir.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-64])
    r = run(tiny_hf_dir, "--recipe", recipe, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "truncated" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_compressing_a_pruned_checkpoint_repacks_it_and_loads(tiny_hf_dir, tmp_path):
    """compress -> prune -> compress: the second recipe is applied to the pruned modules (int8 values,
    same mask), the result loads, and a recipe that cannot re-pack them is refused in one line."""
    import torch

    from sizewise.compression.sparse import SparseLinear
    from sizewise.io.model_load import load_model

    pruned, q = tmp_path / "p50", tmp_path / "q"
    r = run(tiny_hf_dir, "--prune", "magnitude", "--sparsity", "0.5", "--out", pruned, "--no-record")
    assert r.exit_code == 0, r.output
    r = run(pruned, "--recipe", "int8-wo", "--out", q, "--json", "--no-record")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert set(summary["schemes"]) == {"sparse-bitmask-int8"} and not summary["streamed"]
    src, out = load_model(str(pruned)).model, load_model(str(q)).model
    a, b = src.model.layers[0].mlp.up_proj, out.model.layers[0].mlp.up_proj
    assert isinstance(b, SparseLinear) and b.values_format == "int8" and torch.equal(a.mask, b.mask)
    err = (a.dequantized_weight().float() - b.dequantized_weight().float()).abs().max()
    assert 0 < err <= a.dequantized_weight().float().abs().max() / 127  # int8 rounding, nothing more
    r = run(pruned, "--recipe", "int4-gptq-g64", "--out", tmp_path / "g", "--no-record")
    assert r.exit_code == 2 and "already compressed" in r.output and not (tmp_path / "g").exists()
