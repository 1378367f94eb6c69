"""Lineage: which model each model was made from, as a chain to the root and a tree under it.

Why a tree from the root, not just the chain: "what else was made from the same parent" is the
question a person asks next (compare the int4 sibling with the pruned one). Cycles cannot come
from content hashes in practice, but a hand-edited registry could hold one: every walk stops at a
model it has already visited.
"""
from __future__ import annotations

from typing import Any


def ancestors(reg, mid: str) -> list[str]:
    """[root, ..., mid]: the chain of parents (a parent forgotten by gc ends the chain)."""
    chain, seen = [mid], {mid}
    while True:
        row = reg.conn.execute("SELECT parent_id FROM models WHERE id=?", (chain[-1],)).fetchone()
        pid = row[0] if row else None
        if not pid or pid in seen:
            break
        chain.append(pid)
        seen.add(pid)
    return chain[::-1]


def _node(reg, mid: str, seen: set) -> dict[str, Any]:
    seen.add(mid)
    row = reg.conn.execute("SELECT name, kind, recipe_name FROM models WHERE id=?", (mid,)).fetchone()
    name, kind, recipe = row if row else ("(forgotten)", None, None)
    latest = reg.latest_metrics(mid) if row else {}
    kids = [r[0] for r in reg.conn.execute("SELECT id FROM models WHERE parent_id=? ORDER BY created, id", (mid,))]
    return {"id": mid, "name": name, "kind": kind, "recipe": recipe,
            "metrics": {k: latest[k] for k in ("ppl", "kld", "top1", "bytes_on_disk") if k in latest},
            "children": [_node(reg, k, seen) for k in kids if k not in seen]}


def lineage(reg, mid: str) -> dict[str, Any]:
    """{"id", "root", "ancestors": [root..id], "tree": nested {id, name, recipe, metrics, children}}."""
    chain = ancestors(reg, mid)
    return {"id": mid, "root": chain[0], "ancestors": chain, "depth": len(chain) - 1, "tree": _node(reg, chain[0], set())}


def rich_tree(lin: dict, short: int = 12):
    """The tree for a terminal: the asked-for model in bold, its ancestors marked."""
    from rich.markup import escape
    from rich.tree import Tree

    on_path = set(lin["ancestors"])

    def label(n: dict) -> str:
        bits = [f"{n['id'][:short]}", escape(n["name"])]
        if n.get("recipe"):
            bits.append(f"[cyan]{escape(n['recipe'])}[/]")
        m = n.get("metrics") or {}
        if "ppl" in m:
            bits.append(f"ppl {m['ppl']:.3f}")
        if "bytes_on_disk" in m:
            bits.append(f"{m['bytes_on_disk'] / 1e6:.1f} MB")
        text = "  ".join(bits)
        if n["id"] == lin["id"]:
            return f"[bold]{text}  <- this model[/]"
        return text if n["id"] in on_path else f"[dim]{text}[/]"

    def add(t, n):
        for c in n["children"]:
            add(t.add(label(c)), c)

    root = Tree(label(lin["tree"]))
    add(root, lin["tree"])
    return root
