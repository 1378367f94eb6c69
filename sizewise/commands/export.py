"""`sizewise export`: dispatch to sizewise/export/<target>.py and print its report."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from sizewise.errors import SizewiseError
from sizewise.export import TARGETS


def export_command(src: str, to: str, out: str, type_: str | None, allow_requantize: bool, force: bool,
                   json_out: bool, measure_tokens: int = 2048) -> dict:
    if to not in TARGETS:
        raise SizewiseError(f"unknown --to {to!r}: choose one of {', '.join(TARGETS)}")
    mod = importlib.import_module(TARGETS[to])
    types = tuple(getattr(mod, "TYPES", ()))
    if type_ is not None and type_ not in types:
        valid = ", ".join(types) if types else "none (this target takes no --type)"
        raise SizewiseError(f"unknown --type {type_!r} for --to {to}: valid types are {valid}")
    if measure_tokens < 0:
        raise SizewiseError(f"--measure-tokens must be 0 or more (got {measure_tokens})")
    from sizewise.io.atomic import recover
    recover(out)  # a killed earlier run's temps; its old --out put back if it was moved aside
    if Path(out).exists() and not force:
        raise SizewiseError(f"{out} already exists: choose another --out or pass --force to replace it")
    report = mod.export(src, Path(out), type_=type_, allow_requantize=allow_requantize, force=force,
                        measure_tokens=measure_tokens)
    report = vocabulary(report, measure_tokens)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return report


def vocabulary(report: dict, measure_tokens: int) -> dict:
    """docs/vocabulary.md names beside the report's own (`bytes`, `kld_vs_src` stay one release)."""
    from sizewise.registry.vocabulary import with_aliases
    out = with_aliases(report, {"bytes": "bytes_on_disk", "kld_vs_src": "kld"})
    if out.get("kld") is not None:
        out.setdefault("measure_tokens", measure_tokens)
    return out


def _print(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from sizewise.units import fmt_bytes

    c = Console()
    c.print(f"exported {r['source']['path']} -> {r['out']} ({r['target']}, {fmt_bytes(r['bytes'])})")
    t = Table(title="what was carried over")
    t.add_column("tensors")
    t.add_column("how")
    t.add_row(str(len(r.get("exact", []))), "exact (same values, no re-rounding)")
    for q in r.get("requantized", [])[:20]:
        t.add_row(q["name"], f"re-quantized {q['from']} -> {q['to']}")
    if len(r.get("requantized", [])) > 20:
        t.add_row(f"... {len(r['requantized']) - 20} more", "re-quantized")
    c.print(t)
    if r.get("kld_vs_src") is not None:
        c.print(f"KL divergence of the export against the source: {r['kld_vs_src']:.5f} (measured)")
    for n in r.get("notes", []):
        c.print(f"note: {n}")
