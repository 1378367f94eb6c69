"""`sizewise report SRC --out report.html`: a study directory, a compare JSON (or, once the
registry lands, a run ID) -> one self-contained HTML page."""
from __future__ import annotations

import json
from pathlib import Path

from sizewise.errors import SizewiseError


def registry_result(ref: str) -> dict | None:
    """The hook for registry run IDs: return the stored result JSON of run `ref` (an ID or a
    unique prefix), or None when there is no registry in this build. Wire at merge:
    `Registry.open(path).get(ref)` and hand back its result dict."""
    try:
        from sizewise.registry import Registry  # noqa: F401 - the colleague's store (not in this branch)
    except ImportError:
        return None
    return None


def load_source(src: str) -> dict:
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
    found = registry_result(src)
    if found is None:
        raise SizewiseError(f"{src} not found: give a study directory, a study.json or compare JSON file "
                            "(registry run IDs once the registry is installed)")
    return found


def write_report(data: dict, out: str | Path) -> Path:
    from sizewise.io.atomic import atomic_write_text
    from sizewise.report.html import render

    return atomic_write_text(out, render(data))


def report_command(src: str, out: str = "report.html") -> Path:
    if Path(out).is_dir():
        raise SizewiseError(f"--out {out} is a directory: give a file name such as report.html")
    data = load_source(src)
    try:
        path = write_report(data, out)
    except (KeyError, TypeError) as e:
        raise SizewiseError(f"{src} is missing a field the report needs ({e}): was it written by this sizewise?") from None
    print(f"wrote {path}")
    return path
