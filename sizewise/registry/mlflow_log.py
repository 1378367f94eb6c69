"""`--mlflow URI`: the same records the registry gets, also as MLflow runs (and model versions).

Why from the registry's records and not from each verb: `results.py` already says, for every
verb, which model a run is about, its parent, recipe, metrics and artifacts; MLflow gets exactly
that, so the two never disagree. One MLflow run per record: params = the recipe (flattened) plus
model/parent/verb, metrics = the record's metrics under their canonical names, artifacts = the
small files (manifests, configs, study.json/md and plots; never the weights). Models that a verb
wrote (compress, prune, share, export) become versions of a registered model named after the
output, with the output's path as the version's source.

mlflow is imported only here and only when --mlflow is given: sizewise does not need it, and its
import costs seconds.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from sizewise.errors import SizewiseError

EXPERIMENT = "sizewise"  # $MLFLOW_EXPERIMENT_NAME overrides, as in MLflow itself
WRITES_MODELS = ("compress", "prune", "share", "export")
SMALL_SUFFIXES = (".json", ".md", ".png", ".svg", ".html", ".txt", ".yaml", ".yml", ".csv")
MAX_ARTIFACT_BYTES = 20 * 1024 * 1024


def require_mlflow():
    """The mlflow module, or one line that says how to get it (checked before a verb does its work)."""
    try:
        import mlflow
    except ImportError:
        raise SizewiseError("--mlflow needs MLflow, which is not installed: pip install sizewise[mlflow]") from None
    return mlflow


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: MLflow params are flat strings."""
    if not isinstance(d, dict):
        return {prefix or "value": d if isinstance(d, str) else json.dumps(d)}
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif v is not None:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def small_files(path: Path) -> list[Path]:
    """What to log for an artifact path: the file itself, or a directory's small files (manifests,
    configs, reports, plots) without descending into variants/ or reading any weights."""
    if path.is_file():
        if path.name == "study.json":  # a study: the whole study directory's reports and plots
            return small_files(path.parent)
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SMALL_SUFFIXES
                  and p.stat().st_size <= MAX_ARTIFACT_BYTES)


def _experiment(client, uri: str) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in ./mlruns of wherever we ran
        location = str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return client.create_experiment(name, artifact_location=location)


def registered_name(model: str) -> str:
    p = Path(model)
    return ("sizewise-" + (p.stem if p.suffix else p.name)) if model != "bundled" else "sizewise-bundled"


def log_run(client, exp_id: str, verb: str, rec: dict, register: bool) -> str:
    """One record -> one finished MLflow run; returns its run id."""
    from mlflow.entities import Metric, Param, RunTag

    from sizewise.registry.record import normalize_metrics

    model = str(rec["model"])
    now = int(time.time() * 1000)
    tags = {"mlflow.runName": f"{verb} {Path(model).name or model}", "sizewise.verb": verb, "sizewise.model": model}
    run = client.create_run(exp_id, start_time=now, tags=tags)
    rid = run.info.run_id
    params = {"verb": verb, "model": model}
    if rec.get("parent") is not None:
        params["parent"] = str(rec["parent"])
    if rec.get("recipe") is not None:
        params.update(flatten(rec["recipe"], "recipe"))
    if rec.get("protocol"):
        params.update(flatten(rec["protocol"], "protocol"))
    params = {k: (v if len(v) <= 500 else v[:497] + "...") for k, v in params.items()}
    metrics = [Metric(m["name"], m["value"], now, 0) for m in normalize_metrics(rec.get("metrics"), rec.get("protocol"))]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("sizewise.extra", json.dumps(rec.get("extra"), default=str)[:5000])] if rec.get("extra") else [])
    for a in rec.get("artifacts") or []:
        ap = Path(a)
        folder = ap.name if ap.is_dir() else (ap.parent.name if ap.name == "study.json" else None)
        for f in small_files(ap):
            client.log_artifact(rid, str(f), folder)
    if register:
        name = registered_name(model)
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MLflow raises its own not-found exception type per store
            client.create_registered_model(name, description=f"written by sizewise {verb}")
        client.create_model_version(name, source=str(Path(model).resolve()), run_id=rid,
                                    tags={"sizewise.verb": verb})
    client.set_terminated(rid, end_time=int(time.time() * 1000))
    return rid


def log_result(verb: str, records: Callable[[], list[dict]], uri: str,
               warn: Callable[[str], None] | None = None) -> list[str]:
    """Log each record as an MLflow run at `uri`; a failure is one warning line, never an exit
    (the verb's work is done and printed, as with the registry)."""
    import sys

    say = warn or (lambda msg: print(msg, file=sys.stderr))
    ids: list[str] = []
    try:
        require_mlflow()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp = _experiment(client, uri)
        for i, rec in enumerate(records()):
            # the first record of a writing verb is the model it wrote (results.py); the others are references
            ids.append(log_run(client, exp, verb, rec, register=verb in WRITES_MODELS and i == 0))
    except Exception as e:  # noqa: BLE001
        first = (str(e).splitlines() or [e.__class__.__name__])[0]
        say(f"warning: not logged to MLflow at {uri}: {first} (the {verb} result above is complete)")
    return ids
