"""`sizewise eval --peer llamacpp`: bad peer names, a missing binding, a source GGUF cannot hold, and (with
llama-cpp-python installed: `make peer`) llama.cpp's numbers on the same weights beside sizewise's."""
from __future__ import annotations

import subprocess
import sys

import pytest

import sizewise
from sizewise.errors import SizewiseError
from sizewise.evaluate import llamacpp_peer as LP
from sizewise.export import llamacpp as L


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model_dir, tmp_path_factory):
    """int4-g64 of the tiny llama (bundled tokenizer): GGUF holds it exactly (Q4_1)."""
    from sizewise.io.model_load import load_model
    d = tmp_path_factory.mktemp("peer") / "int4-g64"
    lm = load_model(str(tiny_model_dir))
    sizewise.save(sizewise.compress(lm.model, "int4-g64"), lm.tokenizer, d, parent=tiny_model_dir)
    return d


def test_unknown_peer_is_one_error_line(tiny_ckpt):
    with pytest.raises(SizewiseError, match="unknown --peer vllm: eval knows llamacpp"):
        LP.parse_peers("llamacpp,vllm")
    r = subprocess.run([sys.executable, "-m", "sizewise.cli", "eval", str(tiny_ckpt), "--peer", "vllm",
                        "--tokens", "16", "--no-speed", "--no-record"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown --peer vllm" in r.stderr + r.stdout


def test_missing_binding_is_a_printed_skip(tiny_ckpt, monkeypatch, capsys):
    from sizewise.commands.eval import evaluate, print_result
    monkeypatch.setattr(L, "available", lambda: "llama-cpp-python is not importable (test); `make peer` builds it")
    r = evaluate(str(tiny_ckpt), tokens=64, window=32, speed=False, progress=False, peers=["llamacpp"])
    assert r["peers"]["llamacpp"] == {"skipped": "llama-cpp-python is not importable (test); `make peer` builds it"}
    print_result(r)
    assert "peer llamacpp skipped: llama-cpp-python is not importable" in capsys.readouterr().out


def test_an_hf_directory_names_the_export_step(tiny_model_dir, tmp_path):
    from sizewise.io.model_load import load_model
    path, why = LP.gguf_for(load_model(str(tiny_model_dir)), tmp_path)
    assert path is None and "sizewise export --to gguf" in why


def test_llamacpp_on_the_same_weights(tiny_ckpt):
    why = L.available()
    if why:
        pytest.skip(why)
    from sizewise.evaluate import data, metrics
    from sizewise.io.model_load import load_model
    lm = load_model(str(tiny_ckpt))
    toks = data.eval_tokens(lm.tokenizer, 128)
    r = LP.llamacpp_beside(lm, toks, 64, threads=1, runs=2, steps=4, prefill=32, prompt=8)
    assert "Q4_1" in r["gguf"]
    ours = metrics.perplexity(lm.model, toks, 64).ppl
    assert abs(r["quality"]["ppl_llamacpp"] / ours - 1) < 0.01  # same codes; fp16 scales and bf16 activations
    assert r["quality"]["kld_sizewise_vs_llamacpp"] < 0.01 and r["quality"]["n_predicted"] == 126
    s = r["speed"]
    for a, b, ratio in zip(s["sizewise_decode_b1_tok_s"]["runs"], s["llamacpp_decode_b1_tok_s"]["runs"],
                           s["decode_ratio"]["runs"]):
        assert ratio == pytest.approx(a / b)
    assert len(s["decode_ratio"]["runs"]) == 2
