"""`sizewise compare` end to end on the tiny Llama: paired quality, interleaved speed, bad input."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from sizewise.cli import app

runner = CliRunner(env={"COLUMNS": "220"})
FAST = ["--tokens", "512", "--window", "256", "--decode-steps", "2", "--prefill-tokens", "32", "--rounds", "2",
        "--max-rounds", "2"]


@pytest.fixture(scope="module")
def perturbed_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its (tied) token table scaled by 4: same tokenizer, sharper random
    logits, so a clearly higher NLL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("tiny-perturbed")
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(4.0)
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d)
    return d


def test_compare_finds_the_perturbation_and_times_both(tiny_model_dir, perturbed_dir, tmp_path):
    out = tmp_path / "cmp.json"
    r = runner.invoke(app, ["compare", str(tiny_model_dir), str(tiny_model_dir), str(perturbed_dir), *FAST,
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Δppl vs ref" in r.output and "interleaved" in r.output and "machine during the run" in r.output
    assert "no: within noise" in r.output and f"wrote {out}" in r.output
    res = json.loads(out.read_text())
    assert res["kind"] == "sizewise.compare" and res["reference"] == tiny_model_dir.name
    names = [m["name"] for m in res["models"]]
    assert len(set(names)) == 3  # the repeated model gets its own label
    pairs = {p["b"]: p for p in res["quality"]["pairs"]}
    same, diff = pairs[names[1]], pairs[names[2]]
    assert not same["distinguishable"] and same["ppl_change_pct"] == 0.0  # identical runs: no difference
    assert diff["distinguishable"] and "distinguishable from zero at 95 %" in diff["verdict"]
    q = {m["name"]: m for m in res["quality"]["models"]}
    assert q[names[0]]["kld"] == pytest.approx(0.0, abs=1e-6) and q[names[2]]["kld"] > 0
    assert res["settings"]["n_predicted"] == 510
    sp = res["speed"]
    assert sp["rounds"] == 2 and set(sp["models"]) == set(names)
    assert set(sp["verdicts"]["decode_b1"]) == set(names[1:])
    assert {"background", "loadavg1"} <= set(sp["load"]) and res["machine"]["cores"] >= 1


def test_compare_is_recorded_and_report_renders_it_by_id(tiny_model_dir, perturbed_dir, tmp_path):
    from sizewise.registry.store import Registry
    reg = tmp_path / "reg.sqlite"
    r = runner.invoke(app, ["compare", str(tiny_model_dir), str(perturbed_dir), *FAST, "--no-speed",
                            "--registry", str(reg)])
    assert r.exit_code == 0, r.output
    with Registry.open(reg, create=False) as g:
        mid = g.identify(str(perturbed_dir)).id
        info = g.get(mid[:8])
    run = info["runs"][-1]
    assert run["verb"] == "compare" and run["extra"]["compare"]["kind"] == "sizewise.compare"
    m = {x["name"]: x["value"] for x in info["metrics"]}
    assert m["compare.nll_diff_lo"] > 0  # the perturbation costs NLL, and the interval says so
    assert m["compare.nll_diff_lo"] <= m["compare.nll_diff"] <= m["compare.nll_diff_hi"]
    assert m["ppl_lo"] <= m["ppl"] <= m["ppl_hi"] and m["kld"] > 0
    page = tmp_path / "r.html"
    r = runner.invoke(app, ["report", mid[:10], "--out", str(page), "--registry", str(reg)])
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert perturbed_dir.name in html and "<svg" in html
    r = runner.invoke(app, ["report", "ffffffffff", "--out", str(page), "--registry", str(reg)])
    assert r.exit_code == 2 and r.output.startswith("error:")
    r = runner.invoke(app, ["compare", str(tiny_model_dir), str(perturbed_dir), *FAST, "--no-speed",
                            "--registry", str(tmp_path / "other.sqlite"), "--no-record"])
    assert r.exit_code == 0 and not (tmp_path / "other.sqlite").exists()


def test_compare_refuses_different_tokenizers(tiny_model_dir, tmp_path):
    other = tmp_path / "other-tok"
    shutil.copytree(tiny_model_dir, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    tj["model"]["merges"] = tj["model"]["merges"][: len(tj["model"]["merges"]) // 4]  # a different BPE
    (other / "tokenizer.json").write_text(json.dumps(tj))
    r = runner.invoke(app, ["compare", str(tiny_model_dir), str(other), *FAST, "--no-speed"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "different tokenizers" in lines[0]


def test_compare_bad_input_is_one_error_line(tiny_model_dir, tmp_path):
    for args in (["compare", str(tiny_model_dir)], ["compare", str(tiny_model_dir), str(tmp_path / "nope")],
                 ["compare", str(tiny_model_dir), str(tiny_model_dir), "--rounds", "1"],
                 ["compare", str(tiny_model_dir), str(tiny_model_dir), "--batches", "x"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output, (args, r.output)
