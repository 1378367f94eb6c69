"""`sizewise plan` on a directory written by `sizewise export --to vllm`: sized in its stored format and
launched with `--quantization compressed-tensors`; a plain float directory gets no such flag."""
from __future__ import annotations

import json
import shlex

from typer.testing import CliRunner

from sizewise.cli import app
from sizewise.commands.plan import compressed_tensors_format
from sizewise.export import compressed_tensors as CT
from tests.export import ct_helpers as H


def _plan(path) -> dict:
    r = CliRunner().invoke(app, ["plan", str(path), "--hardware", "h100", "--gpus-per-node", "1", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_plan_prints_the_vllm_command_for_an_export(tmp_path):
    ck = H.sizewise_checkpoint(tmp_path / "ck", "int4-ct-g32")
    out = tmp_path / "ct"
    CT.export(str(ck), out, measure_tokens=0)
    d = _plan(out)
    assert d["request"]["weights"] == "int4-ct-g32"
    toks = shlex.split(d["launch"]["vllm"][0])
    assert toks[:3] == ["vllm", "serve", str(out.resolve())]
    assert toks[toks.index("--quantization") + 1] == "compressed-tensors" and "--dtype" not in toks
    sg = shlex.split(d["launch"]["sglang"][0])
    assert sg[sg.index("--quantization") + 1] == "compressed-tensors"
    assert any("compressed-tensors" in n for n in d["launch"]["notes"])


def test_plan_float_directory_has_no_quantization_flag(tmp_path):
    m = H.tiny_llama(0)
    m.save_pretrained(tmp_path / "f")
    d = _plan(tmp_path / "f")
    assert "--quantization" not in shlex.split(d["launch"]["vllm"][0])


def test_compressed_tensors_format_reads_the_groups():
    g = lambda w, a=None: {"weights": w, "input_activations": a}  # noqa: E731
    int4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}
    int8 = {"num_bits": 8, "type": "int", "strategy": "channel"}
    assert compressed_tensors_format({"config_groups": {"a": g(int4)}}) == "int4-ct-g64"
    assert compressed_tensors_format({"config_groups": {"a": g(int8, {"num_bits": 8})}}) == "int8"
    assert compressed_tensors_format({"config_groups": {"a": g(int4), "b": g(int8)}}) is None  # mixed: as stored
    assert compressed_tensors_format({"config_groups": {"a": g({**int8, "type": "float"})}}) is None
