"""report.html from study and compare JSON: content, self-containment, the CLI, bad input."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import synthetic  # noqa: E402

from sizewise.cli import app  # noqa: E402
from sizewise.report.html import is_self_contained, render  # noqa: E402

runner = CliRunner()


def test_study_page_has_tables_plots_lineage_machine_and_flags():
    page = render(synthetic.study())
    assert is_self_contained(page) and "<script" not in page
    assert page.count("<svg") == 2 and 'id="plot-size"' in page and 'id="plot-speed"' in page
    measured = re.search(r'<table id="measured">(.*?)</table>', page, re.S).group(1)
    assert measured.count("<tr>") == 6  # header + 5 recipes
    # the busy row shows its interval and the flag, never a bare ratio; the quiet one shows its ratio
    assert "busy! 3." in measured and "3.90x" not in measured and "2.60x ±" in measured
    assert "≈1 (" in measured  # int4-gptq-g64 at 1.01x: no measurable difference
    claims = re.search(r'<table id="claims">(.*?)</table>', page, re.S).group(1)
    assert "8x" in claims and "4.61x" in claims and "fp16 (not in this run)" in claims
    assert "timing not trustworthy" in page and "40 % of 2 CPUs" in page
    assert "Pareto front" in page and 'id="lineage"' in page and "int4-gptq-g64: kind=int4" in page
    assert "Synthetic CPU" in page and "sizewise study bundled --quick" in page


def test_compare_page_has_quality_speed_and_verdicts():
    page = render(synthetic.compare())
    assert is_self_contained(page) and page.count("<svg") == 2
    q = re.search(r'<table id="measured">(.*?)</table>', page, re.S).group(1)
    assert "(reference)" in q and "yes" in q and "no: within noise" in q
    sp = re.search(r'<table id="speed">(.*?)</table>', page, re.S).group(1)
    assert "3.88x ±" in sp and "2.49x ±" in sp and "1.00x (ref)" in sp
    assert "distinguishable from zero at 95 %" in page and "← /x/fp32 via int4-g64" in page


def test_self_containment_check_catches_external_resources():
    assert not is_self_contained('<script src="https://cdn.plot.ly/plotly.js"></script>')
    assert not is_self_contained('<link href="//fonts.example/x.css">')
    assert is_self_contained('<a id="x">no fetch</a>')


def test_cli_report_from_a_study_dir_and_a_compare_file(tmp_path):
    d = tmp_path / "study"
    d.mkdir()
    (d / "study.json").write_text(json.dumps(synthetic.study()))
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("<!DOCTYPE html>") and "sizewise study: bundled" in out.read_text()
    (tmp_path / "c.json").write_text(json.dumps(synthetic.compare()))
    r = runner.invoke(app, ["report", str(tmp_path / "c.json"), "--out", str(out)])
    assert r.exit_code == 0 and "sizewise compare" in out.read_text()


def test_cli_report_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    (tmp_path / "bad.json").write_text("{not json")
    for src in (str(tmp_path / "x.json"), str(tmp_path / "bad.json"), str(tmp_path), "0123abcd"):
        r = runner.invoke(app, ["report", src, "--out", str(tmp_path / "o.html")])
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, (src, r.output)
    assert not (tmp_path / "o.html").exists()
