"""One vocabulary: the same quantity has the same name in every verb's JSON; old names stay as aliases."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from sizewise.cli import app
from sizewise.registry.record import normalize_metrics
from sizewise.registry.vocabulary import ALIASES, CANONICAL, with_aliases

runner = CliRunner()


def _json(*args) -> dict:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_estimate_and_inspect_agree_on_params_total(tiny_src):
    est = _json("estimate", tiny_src, "--json")
    ins = _json("inspect", tiny_src / "model.safetensors", "--json")
    assert ins["params"]["total"] == est["params"]["total"] > 0  # the canonical name in both verbs
    assert ins["parameters"] == ins["params"]["total"]  # inspect's old name, kept one release
    assert ins["bytes_on_disk"] == ins["file_bytes"] > ins["data_bytes"]


def test_export_report_gains_canonical_names():
    from sizewise.commands.export import vocabulary
    rep = vocabulary({"target": "gguf", "bytes": 10, "kld_vs_src": 0.01}, 2048)
    assert rep["bytes_on_disk"] == rep["bytes"] == 10 and rep["kld"] == rep["kld_vs_src"] == 0.01
    assert rep["measure_tokens"] == 2048
    assert "kld" not in vocabulary({"bytes": 1}, 2048) or vocabulary({"bytes": 1}, 2048)["kld"] is None


def test_old_names_are_stored_under_canonical_names():
    rows = normalize_metrics({"parameters": 7, "top1_agreement": 0.5, "kld_vs_src": 0.1, "file_bytes": 3})
    assert {r["name"] for r in rows} == {"params.total", "top1", "kld", "bytes_on_disk"}
    for new, olds in ALIASES.items():
        assert all(CANONICAL[o] == new for o in olds)


def test_with_aliases_nests_dotted_names_and_keeps_old_keys():
    d = with_aliases({"parameters": 5, "bytes": 9}, {"parameters": "params.total", "bytes": "bytes_on_disk"})
    assert d == {"parameters": 5, "bytes": 9, "params": {"total": 5}, "bytes_on_disk": 9}


def test_docs_list_every_alias():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "vocabulary.md").read_text()
    for new, olds in ALIASES.items():
        assert f"`{new}`" in doc and all(f"`{o}`" in doc for o in olds)
