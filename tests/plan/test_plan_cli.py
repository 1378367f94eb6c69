"""`sizewise plan` / `sizewise hardware` end to end through the CLI: JSON shape, launch lines, errors."""
from __future__ import annotations

import json
import shlex

from typer.testing import CliRunner

from sizewise.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_plan_json_best_layout_and_launch_agree():
    r = run("plan", "deepseek-v3", "--hardware", "h200", "--batch", "4", "--top", "3", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fits"] is True and d["request"]["weights"] == "fp8"  # the checkpoint's own format
    assert 1 <= len(d["plans"]) <= 3
    best = d["plans"][0]
    assert best["fits"] and best["per_device"]["total"] <= best["usable_bytes"]
    assert best["tp"] * best["pp"] * best["dp"] == best["devices"]
    assert len(d["launch"]["vllm"]) == 1  # one node: one line
    toks = shlex.split(d["launch"]["vllm"][0])
    tp = int(toks[toks.index("--tensor-parallel-size") + 1])
    pp = int(toks[toks.index("--pipeline-parallel-size") + 1])
    dp = int(toks[toks.index("--data-parallel-size") + 1]) if "--data-parallel-size" in toks else 1
    assert (tp, pp, dp) == (best["tp"], best["pp"], best["dp"])
    assert d["launch"]["sglang"] and d["remedy"] is None


def test_plan_table_nothing_fits_says_so():
    r = run("plan", "deepseek-v3", "--hardware", "H100")
    assert r.exit_code == 0, r.output
    assert "nothing fits" in r.output and "--weights" in r.output


def test_plan_train_json_has_deepspeed_config():
    r = run("plan", "llama-3.1-8b", "--hardware", "h100", "--train", "--zero", "2", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["mode"] == "train" and d["fits"]
    assert d["deepspeed"]["config"]["zero_optimization"]["stage"] == 2
    assert d["deepspeed"]["command"].startswith("deepspeed --num_gpus 8 --num_nodes 1")


def test_bad_input_exits_2_with_one_line():
    for args in (["plan", "deepseek-v3", "--hardware", "nope"],
                 ["plan", "deepseek-v3", "--hardware", "h100", "--nodes", "0"],
                 ["plan", "deepseek-v3", "--hardware", "h100", "--gpus-per-node", "0"],
                 ["plan", "deepseek-v3", "--hardware", "h100", "--kv-dtype", "fp5"]):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and "Traceback" not in r.output


def test_hardware_json_lists_catalog_and_cpu():
    r = run("hardware", "--json")
    assert r.exit_code == 0, r.output
    hw = json.loads(r.output)["hardware"]
    names = [h["name"] for h in hw]
    assert len(names) >= 11 and "H100 SXM" in names and "cpu" in names
    assert all(h["source"] for h in hw)
    assert run("hardware").exit_code == 0
