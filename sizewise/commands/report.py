"""`sizewise report SRC --out report.html`: a study directory, a compare JSON, or a registry model ID
(its most recent recorded compare or study) -> one self-contained HTML page."""
from __future__ import annotations

import json
from pathlib import Path

from sizewise.errors import SizewiseError


def registry_result(ref: str, registry: str | None = None) -> dict | None:
    """The newest compare result or study.json recorded for the model `ref` (a full id, a unique prefix, a
    tag or a recorded path), or None when no registry file exists. The registry is opened read-only in
    spirit (never created here); an unknown or ambiguous id is the registry's own one-line error."""
    from sizewise.registry.store import Registry, default_path

    path = Path(registry) if registry else default_path()
    if not path.exists():
        return None
    with Registry.open(path, create=False) as reg:
        info = reg.get(ref)
    for run in reversed(info["runs"]):  # newest first
        extra = run.get("extra") or {}
        if isinstance(extra.get("compare"), dict):
            return extra["compare"]
        for a in run.get("artifacts") or []:
            if str(a).endswith("study.json") and Path(a).is_file():
                return json.loads(Path(a).read_text(encoding="utf-8"))
    raise SizewiseError(f"model {info['id'][:12]} has no compare or study recorded in {path}: run "
                        "`sizewise compare` or `sizewise study` on it first, or give a study directory or JSON file")


def load_source(src: str, registry: str | None = None) -> dict:
    p = Path(src)
    if p.is_dir():
        f = p / "study.json"
        if not f.is_file():
            raise SizewiseError(f"{p} has no study.json: give a `sizewise study` output directory or a JSON file")
        p = f
    if p.is_file():
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SizewiseError(f"{p} is not JSON ({str(e).splitlines()[0]}): give study.json or a compare result")
    found = registry_result(src, registry)
    if found is None:
        raise SizewiseError(f"{src} not found: give a study directory, a study.json or compare JSON file, "
                            "or a model ID from `sizewise registry list`")
    return found


def write_report(data: dict, out: str | Path) -> Path:
    from sizewise.io.atomic import atomic_write_text
    from sizewise.report.html import render

    return atomic_write_text(out, render(data))


def report_command(src: str, out: str = "report.html", registry: str | None = None) -> Path:
    if Path(out).is_dir():
        raise SizewiseError(f"--out {out} is a directory: give a file name such as report.html")
    data = load_source(src, registry)
    try:
        path = write_report(data, out)
    except (KeyError, TypeError) as e:
        raise SizewiseError(f"{src} is missing a field the report needs ({e}): was it written by this sizewise?") from None
    print(f"wrote {path}")
    return path
