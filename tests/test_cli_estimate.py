"""`sizewise estimate` / `sizewise presets` through typer's CliRunner: JSON keys and types, exit codes."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sizewise.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_estimate_json_keys_and_types():
    r = run("estimate", "deepseek-v3", "--json", "--train", "--zero", "3", "--gpus", "64")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    p = d["params"]
    assert isinstance(p["total"], int) and isinstance(p["activated"], int)
    assert p["activated"] < p["total"]
    assert sum(g["total"] for g in p["groups"].values()) == p["total"]
    assert p["mtp"] > 0 and p["total"] - p["mtp"] == 671_026_419_200
    assert d["native_format"] == "fp8"  # V3 ships fp8 with 128x128 block scales
    for fmt in ("fp32", "bf16", "fp8", "int8", "int4-g128", "nf4", "q8_0", "q4_k_m", "q4_0", "q6_k"):
        assert isinstance(d["sizes"][fmt]["bytes"], int)
    assert d["sizes"]["fp32"]["bytes"] > d["sizes"]["bf16"]["bytes"] > d["sizes"]["int4-g128"]["bytes"]
    inf = d["memory"]["inference"]
    assert isinstance(inf["total_bytes"], int) and inf["kv_cache_naive"] > inf["kv_cache"]
    tr = d["memory"]["training"]
    assert isinstance(tr["per_gpu_bytes"], int) and tr["total_bytes"] == 64 * tr["per_gpu_bytes"]


def test_estimate_json_without_train_has_no_training(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "tie_word_embeddings": True}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    r = run("estimate", str(path), "--json", "--context", "128", "--batch", "2", "--kv-dtype", "fp8")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert "training" not in d["memory"]
    assert d["memory"]["inference"]["kv_cache"] == 2 * 2 * 16 * 2 * 128 * 2  # K,V * kv heads * dim * layers * ctx * batch, 1 byte
    assert d["params"]["total"] == d["sizes"]["fp32"]["bytes"] // 4


def test_estimate_table_mentions_mtp_and_both_units():
    r = run("estimate", "deepseek-r1", "--train")
    assert r.exit_code == 0, r.output
    assert "MTP" in r.output and "GiB" in r.output and " GB" in r.output
    assert "Training memory" in r.output and "MLA latent" in r.output


@pytest.mark.parametrize("args,needle", [
    (("--weights", "int3"), "unknown storage format"),
    (("--zero", "5", "--train"), "--zero"),
    (("--context", "-4"), "--context"),
    (("--batch", "0"), "--batch"),
    (("--kv-dtype", "fp4"), "KV cache dtype"),
    (("--optimizer", "lion", "--train"), "optimizer"),
])
def test_estimate_bad_input_one_line_exit_2(args, needle):
    r = run("estimate", "llama-3.1-8b", *args)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in r.output


def test_estimate_unknown_model_exit_2():
    r = run("estimate", "no-such-model-xyz")
    assert r.exit_code == 2 and r.output.startswith("error: ")


def test_presets_json():
    r = run("presets", "--json")
    assert r.exit_code == 0, r.output
    rows = {p["name"]: p for p in json.loads(r.output)["presets"]}
    assert rows["llama-3.1-8b"]["total"] == 8_030_261_248
    assert rows["deepseek-v3"]["mtp"] > 0
    assert all(isinstance(p["total"], int) and p["activated"] <= p["total"] for p in rows.values())
