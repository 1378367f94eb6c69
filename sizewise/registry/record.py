"""record_run: the one call every verb (and any script) makes to put a run into the registry.

Why torch-free: recording happens after a verb's work is done and from tests' writer processes; it
must not pay torch's import. Versions come from package metadata, the machine from /proc and os.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

from sizewise.errors import SizewiseError


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import sizewise
    out = {"sizewise": getattr(sizewise, "__version__", "0"), "python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    """The fields of sizewise.evaluate.machine.machine_info() that need no torch."""
    from sizewise.evaluate.machine import cores, cpu_model
    return {"cpu": cpu_model(), "cores": cores(), "python": sys.version.split()[0], "platform": platform.platform()}


def command_line() -> str:
    import shlex
    prog = os.path.basename(sys.argv[0]) if sys.argv else "python"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def normalize_metrics(metrics: dict | None, protocol: dict | None = None) -> list[dict]:
    """{name: number | {"value", "tokens", "protocol"} | {sub: ...}} -> rows under canonical names.

    Nested plain dicts flatten with a dot ('decode_tok_s': {'b1': ..} -> 'decode_tok_s.b1'); None
    and non-finite values are skipped (not measured); anything else non-numeric is bad input.
    """
    from sizewise.registry.vocabulary import canonical

    if metrics is None:
        return []
    if not isinstance(metrics, dict):
        raise SizewiseError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    default_tokens = (protocol or {}).get("tokens")
    rows: dict[str, dict] = {}

    def add(name: str, v: Any) -> None:
        if isinstance(v, dict) and "value" not in v:
            for k, sub in v.items():
                add(f"{name}.{k}", sub)
            return
        entry = dict(v) if isinstance(v, dict) else {"value": v}
        val = entry.get("value")
        if val is None or isinstance(val, bool):
            return
        if not isinstance(val, (int, float)):
            raise SizewiseError(f"metric {name!r}: value must be a number, got {val!r}")
        if not math.isfinite(val):
            return
        tokens = entry.get("tokens", default_tokens)
        rows[canonical(name)] = {"name": canonical(name), "value": float(val),
                                 "tokens": int(tokens) if tokens is not None else None,
                                 "protocol": entry.get("protocol", protocol)}

    for k, v in metrics.items():
        add(str(k), v)
    return list(rows.values())


def _manifest(path: Optional[str]) -> dict:
    """A sizewise checkpoint's sizewise.json (parent, recipe), or {}."""
    if not path or not Path(path).is_dir():
        return {}
    try:
        return json.loads((Path(path) / "sizewise.json").read_text())
    except (OSError, ValueError):
        return {}


def record_run(verb: str, *, model: str | os.PathLike, parent: str | os.PathLike | None = None,
               recipe: dict | str | None = None, metrics: dict | None = None, protocol: dict | None = None,
               artifacts: list[str] | None = None, extra: dict | None = None, registry: str | None = None,
               enabled: bool = True) -> Optional[str]:
    """Record one run of `verb` on `model` (see sizewise/registry/__init__.py); returns the model id.

    parent/recipe default to what the model's own sizewise.json says. extra may carry "machine" and
    "command" (a verb's result already has them); otherwise they are taken from this process.
    """
    if not enabled:
        return None
    if not isinstance(verb, str) or not verb.strip():
        raise SizewiseError("record_run needs a verb name, e.g. 'eval'")
    rows = normalize_metrics(metrics, protocol)
    extra = dict(extra or {})
    mach = extra.pop("machine", None) or machine()
    cmd = extra.pop("command", None) or command_line()
    from sizewise.registry.store import Registry

    with Registry.open(registry) as reg:
        ident = reg.identify(model)
        man = _manifest(ident.path)
        if parent is None:
            p = (man.get("parent") or {}).get("path")
            parent = p if p and Path(p).exists() else None
        pident = reg.identify(parent) if parent is not None else None
        if recipe is None and man:
            recipe = man.get("recipe") or None
            if isinstance(recipe, dict) and man.get("recipe_name"):
                recipe = {"name": man["recipe_name"], **recipe}
        return reg.record(verb, ident, pident, recipe=recipe, metrics=rows, protocol=protocol,
                          artifacts=[str(a) for a in artifacts] if artifacts else None, extra=extra or None,
                          command=cmd, versions=versions(), machine=mach)
