"""`sizewise registry list|show|lineage|tag|gc`: read (and tag/gc) the model registry.

Unlike the recording verbs, these report a bad registry (newer schema, corrupt file, lock held
too long) or a bad ID as an error: here the registry is the input.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from sizewise.registry.store import SHORT, Registry

HEADLINE = ("ppl", "kld", "top1", "bytes_on_disk")


def _fmt(name: str, v: Optional[float]) -> str:
    if v is None:
        return "-"
    if name == "bytes_on_disk" or name.endswith("_bytes"):
        return f"{v / 1e6:,.1f} MB"
    if name == "top1":
        return f"{100 * v:.1f} %"
    if name in ("params.total", "params.activated") or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.1f}"


def _console():
    """Tables stay readable when piped (a pipe is 80 columns to rich): 160 then, as bench-serve does."""
    from rich.console import Console
    return Console(width=None if Console().is_terminal else 160)


def _out(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def list_command(registry: str | None, parent: str | None, recipe: str | None, metric: str | None,
                 tag: str | None, json_out: bool) -> list[dict]:
    from rich.table import Table

    with Registry.open(registry, create=False) as reg:
        rows = reg.list_models(parent=parent, recipe=recipe, metric=metric, tag=tag)
        path = reg.path
    if json_out:
        _out(rows)
        return rows
    extra = []
    if metric:
        from sizewise.registry.vocabulary import canonical
        name = canonical(metric.split("<")[0].split(">")[0].split("=")[0].strip())
        extra = [name] if name not in HEADLINE else []
    t = Table(title=f"sizewise registry: {len(rows)} model(s) in {path}")
    for col in ("id", "name", "kind", "recipe", "parent", "tags", "verbs", *HEADLINE, *extra):
        t.add_column("size" if col == "bytes_on_disk" else col,
                     justify="right" if col in HEADLINE or col in extra else "left")
    for r in rows:
        t.add_row(r["id"][:SHORT], r["name"], r["kind"], r["recipe_name"] or "-",
                  (r["parent"] or "")[:SHORT] or "-", ",".join(r["tags"]) or "-", ",".join(r["verbs"]),
                  *[_fmt(k, r["latest"].get(k)) for k in (*HEADLINE, *extra)])
    c = _console()
    c.print(t)
    if not rows:
        c.print("no models recorded yet: compress, prune, share, export, eval, study and bench-serve record here")
    return rows


def show_command(registry: str | None, model_id: str, json_out: bool) -> dict:
    from rich.table import Table

    from sizewise.registry.lineage import rich_tree

    with Registry.open(registry, create=False) as reg:
        d = reg.get(model_id)
    if json_out:
        _out(d)
        return d
    c = _console()
    c.print(f"[bold]{d['id']}[/]  {d['name']} ({d['kind']})" + (f"  tags: {', '.join(d['tags'])}" if d["tags"] else ""))
    c.print(f"recipe: {json.dumps(d['recipe']) if d['recipe'] is not None else '-'}")
    c.print(f"parent: {d['parent'] or '- (root)'}")
    for p in d["paths"]:
        c.print(f"path: {p}")
    if not d["files_present"]:
        c.print("[yellow]files gone[/]: kept because models on disk descend from it (or gc has not run)")
    c.print(f"first recorded {d['created']}, last {d['updated']}")
    c.print("lineage (from the root parent):")
    c.print(rich_tree(d["lineage"], SHORT))
    t = Table(title=f"measurements ({len(d['metrics'])})")
    for col in ("metric", "value", "tokens", "verb", "run", "measured", "protocol"):
        t.add_column(col, justify="right" if col in ("value", "tokens", "run") else "left", overflow="fold")
    for m in d["metrics"]:
        proto = ", ".join(f"{k}={v}" for k, v in (m["protocol"] or {}).items() if v is not None and k != "tokens")
        t.add_row(m["name"], _fmt(m["name"], m["value"]), f"{m['tokens']:,}" if m["tokens"] else "-", m["verb"],
                  str(m["run"]), m["measured"], proto or "-")
    c.print(t)
    t = Table(title=f"runs ({len(d['runs'])})")
    for col in ("run", "verb", "when", "command", "versions", "machine"):
        t.add_column(col, overflow="fold")
    for r in d["runs"]:
        v = r["versions"] or {}
        m = r["machine"] or {}
        t.add_row(str(r["id"]), r["verb"], r["created"], r["command"] or "-",
                  " ".join(f"{k} {v[k]}" for k in ("sizewise", "torch", "transformers") if k in v),
                  f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores")
    c.print(t)
    return d


def lineage_command(registry: str | None, model_id: str, json_out: bool) -> dict:
    from sizewise.registry.lineage import rich_tree

    with Registry.open(registry, create=False) as reg:
        lin = reg.lineage(model_id)
    if json_out:
        _out(lin)
    else:
        _console().print(rich_tree(lin, SHORT))
    return lin


def tag_command(registry: str | None, model_id: str, name: str, remove: bool, json_out: bool) -> dict:
    with Registry.open(registry) as reg:
        mid = reg.tag(model_id, name, remove=remove)
        tags = reg.get(mid)["tags"]
    res = {"id": mid, "tag": name, "removed": remove, "tags": tags}
    if json_out:
        _out(res)
    else:
        print(f"{mid[:SHORT]}: {'removed' if remove else 'tagged'} {name} (tags now: {', '.join(tags) or '-'})")
    return res


def gc_command(registry: str | None, dry_run: bool, json_out: bool) -> dict:
    with Registry.open(registry, create=False) as reg:
        res = reg.gc(dry_run=dry_run)
    if json_out:
        _out(res)
    else:
        verb = "would forget" if dry_run else "forgot"
        print(f"{verb} {len(res['models_removed'])} model(s) and {len(res['paths_removed'])} path(s) whose files are gone"
              + "".join(f"\n  {m[:SHORT]}" for m in res["models_removed"]))
    return res
