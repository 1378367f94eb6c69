"""--mlflow: real CLI runs logged to a local SQLite tracking store (params = recipe, metrics, artifacts =
manifests / study files, compressed models registered), a missing mlflow in one error line, and
mlflow never imported without --mlflow."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sizewise.cli import app

runner = CliRunner()


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
        return MlflowClient
    except ImportError as e:
        reason = f"mlflow is not importable ({e}): pip install sizewise[mlflow] to run the MLflow tests"
        print(reason)
        pytest.skip(reason)


def _runs(uri):
    MlflowClient = _mlflow()
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.get_experiment_by_name("sizewise")
    return c, c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_compress_and_eval_log_runs_and_register_the_model(tiny_src, tmp_path, monkeypatch):
    _mlflow()
    monkeypatch.setenv("SIZEWISE_REGISTRY", str(tmp_path / "reg.sqlite"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "int8"
    r = runner.invoke(app, ["compress", str(tiny_src), "--recipe", "int8-wo", "--out", str(out), "--mlflow", uri])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output, r.output
    r = runner.invoke(app, ["eval", str(out), "--tokens", "256", "--window", "128", "--no-speed", "--no-record",
                            "--mlflow", uri, "--text", str(tiny_src / "config.json")])
    assert r.exit_code == 0, r.output
    c, runs = _runs(uri)
    assert [x.data.tags["sizewise.verb"] for x in runs] == ["compress", "eval"]
    comp, ev = runs
    assert comp.data.params["recipe.name"] == "int8-wo" and comp.data.params["parent"] == str(tiny_src)
    assert comp.data.metrics["bytes_on_disk"] > 0
    arts = {a.path for a in c.list_artifacts(comp.info.run_id, "int8")}
    assert {"int8/sizewise.json", "int8/config.json"} <= arts and not any(a.endswith(".safetensors") for a in arts)
    assert ev.data.metrics["ppl"] > 1 and ev.data.params["model"] == str(out)
    versions = c.search_model_versions("name='sizewise-int8'")
    assert len(versions) == 1 and versions[0].run_id == comp.info.run_id and versions[0].source == str(out.resolve())


def test_study_files_are_artifacts(tmp_path):
    MlflowClient = _mlflow()
    from sizewise.registry.mlflow_log import log_result

    d = tmp_path / "study-x"
    (d / "variants").mkdir(parents=True)
    (d / "study.json").write_text(json.dumps({"recipes": []}))
    (d / "study.md").write_text("# study\n")
    (d / "pareto.png").write_bytes(b"\x89PNG")
    (d / "variants" / "model.safetensors").write_bytes(b"0" * 10)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = {"model": "bundled", "metrics": {"ppl": {"value": 14.9, "tokens": 4096}}, "protocol": {"window": 512},
           "artifacts": [str(d / "study.json")]}
    ids = log_result("study", lambda: [rec], uri, warn=lambda m: pytest.fail(m))
    c = MlflowClient(tracking_uri=uri)
    assert {a.path for a in c.list_artifacts(ids[0], "study-x")} == {"study-x/study.json", "study-x/study.md",
                                                                    "study-x/pareto.png"}
    run = c.get_run(ids[0])
    assert run.data.metrics["ppl"] == 14.9 and run.data.params["protocol.window"] == "512"
    assert not c.search_registered_models()  # a study writes no model of its own


def test_a_tracking_failure_is_one_warning(tmp_path):
    _mlflow()
    from sizewise.registry.mlflow_log import log_result

    said = []
    assert log_result("eval", lambda: [{"model": "x", "metrics": {}}], "nosuchscheme://x", warn=said.append) == []
    assert len(said) == 1 and said[0].startswith("warning: not logged to MLflow") and "\n" not in said[0]


def test_missing_mlflow_is_one_error_line_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    r = runner.invoke(app, ["eval", str(tmp_path / "nothing-here"), "--mlflow", "sqlite:///x.db"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines == ["error: --mlflow needs MLflow, which is not installed: pip install sizewise[mlflow]"]


def test_mlflow_is_not_imported_without_the_flag():
    code = ("import sys; import sizewise.cli, sizewise.registry.results, sizewise.registry.mlflow_log; "
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
