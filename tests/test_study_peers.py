"""`sizewise study --peers`: llama.cpp's quantizer on the same parent as rows of the study (study_peers.py).
Bits-per-weight counting and bad input run everywhere; the rows themselves need llama-cpp-python
(`make peer`) and are skipped with its reason where it is absent."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sizewise import study_peers as SP
from sizewise.errors import SizewiseError
from sizewise.export import llamacpp as L


def test_decoder_bits_of_the_bundled_file(bundled_path):
    b = SP.decoder_bits(bundled_path)
    assert b["bits_per_weight"] == 5.0 and b["types"] == {"Q4_1": 1.0}  # 32 nibbles + fp16 d + fp16 m
    assert b["weights"] == 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)  # q, o; k, v; gate, up, down


@pytest.mark.parametrize("scheme,bits", [("int4-g32-s6", 4 + 12 / 32 + 48 / 576), ("int4-g64-fz", 4.5),
                                         ("int4-g32-fz", 5.0), ("int8-wo", 8 + (16 / 576 + 16 / 1536) / 2),
                                         ("fp32", 32.0)])
def test_sizewise_decoder_bits_count_what_is_stored(scheme, bits):
    manifest = {"tensors": {"model.layers.0.mlp.down_proj.weight": {"scheme": scheme, "shape": [576, 1536]},
                            "model.layers.0.mlp.up_proj.weight": {"scheme": scheme, "shape": [1536, 576]},
                            "model.embed_tokens.weight": {"scheme": "bf16", "shape": [49152, 576]}}}
    got = SP.sizewise_decoder_bits(manifest)
    if scheme == "int4-g32-s6":  # rows of 1536 keep 3 super-blocks of 16 groups, rows of 576 one of 18
        bits = ((4 + 12 / 32 + 48 / 576) + (4 + 12 / 32 + 3 * 48 / 1536)) / 2
    assert got == pytest.approx(bits, rel=1e-4)


def test_bad_peer_types():
    with pytest.raises(SizewiseError, match="--peer-types is empty"):
        SP.parse_types(" , ")
    assert SP.parse_types("q4_0,Q8_0") == ("Q4_0", "Q8_0")
    r = subprocess.run([sys.executable, "-m", "sizewise.cli", "study", "bundled", "--peer-types", "Q4_0",
                        "--no-record"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--peer-types needs --peers" in r.stderr + r.stdout


def test_missing_binding_is_a_note(monkeypatch, tmp_path):
    monkeypatch.setattr(L, "available", lambda: "llama-cpp-python is not importable (test)")
    rows, notes = SP.llamacpp_rows(tmp_path, "hf", ref=None, tokens=[], threads=1)
    assert rows == [] and notes == ["llama.cpp peers skipped: llama-cpp-python is not importable (test)"]


def _need_llamacpp():
    why = L.available()
    if why:
        pytest.skip(why)


def test_unknown_llamacpp_type_lists_valid():
    _need_llamacpp()
    with pytest.raises(SizewiseError, match="no quantization type 'Q9_9'.*Q4_K_M"):
        SP._ftype("Q9_9")


def test_llamacpp_rows_on_a_tiny_parent(tiny_model_dir):
    _need_llamacpp()
    from sizewise.evaluate import data, metrics
    from sizewise.io.model_load import load_model
    lm = load_model(str(tiny_model_dir))
    toks = data.eval_tokens(lm.tokenizer, 256)
    ref = metrics.build_reference(lm.model, toks[:128], 64)
    rows, notes = SP.llamacpp_rows(tiny_model_dir, "hf", ref, toks, threads=1, types=("Q8_0", "Q4_0"),
                                   speed_tokens=64, decode_steps=4, decode_prompt=8)
    by = {r["type"]: r for r in rows}
    assert by["Q8_0"]["decoder_bits_per_weight"] == 8.5 and by["Q4_0"]["decoder_bits_per_weight"] == 4.5
    assert 0 <= by["Q8_0"]["quality"]["kld"] < by["Q4_0"]["quality"]["kld"]
    assert by["Q8_0"]["quality"]["n_predicted"] == 126
    assert abs(by["Q8_0"]["quality"]["ppl"] / ref.quality.ppl - 1) < 0.01  # 8 bits: the parent's perplexity
    assert "llama_model_quantize" in notes[0]
