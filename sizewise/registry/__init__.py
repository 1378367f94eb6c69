"""The model registry: every model sizewise reads or writes, by content hash, with lineage and metrics.

Stable API (used by `compare`, `report` and any script):

    from sizewise.registry import record_run, Registry

    mid = record_run("eval", model="out/int4", parent="bundled", recipe="int4-g64",
                     metrics={"ppl": {"value": 15.6, "tokens": 8176}, "bytes_on_disk": 116_600_000},
                     protocol={"corpus": "pydoc_data.topics.topics", "window": 512})
    # -> the model's id (64 hex characters), or None when enabled=False

    with Registry.open() as reg:               # path=None: $SIZEWISE_REGISTRY or the XDG data dir
        reg.list_models(parent=None, recipe=None, metric="ppl<16", tag=None)  # -> [model dict]
        m = reg.get("3fa2")                    # id, unique prefix, tag on one model, or a recorded path
        reg.lineage(m["id"])                   # {"root", "ancestors": [root..id], "tree": {..., "children"}}
        reg.metrics(m["id"])                   # [{"name", "value", "tokens", "protocol", "verb", "run", "measured"}]
        reg.tag(m["id"], "production")         # stage names; tag(..., remove=True) takes one off
        reg.gc(dry_run=False)                  # forget models whose files are gone (ancestors of live ones stay)

record_run(verb, *, model, parent=None, recipe=None, metrics=None, protocol=None, artifacts=None,
           extra=None, registry=None, enabled=True) -> str | None
  model/parent: a path (file or directory), 'bundled', or a preset name; identified by the sha256 of
    their tensor files (hashing.py), cached by (path, size, mtime) in the registry.
  parent/recipe: default to what the model's own sizewise.json says.
  metrics: {name: number | {"value", "tokens", "protocol"}}; names are canonicalized
    (docs/vocabulary.md: 'top1_agreement' is stored as 'top1', 'parameters' as 'params.total').
  extra: JSON-able; its "machine" and "command" keys, when given, replace this process's.
  Each call is one transaction: a process killed mid-record leaves the whole record or none.

Errors are SizewiseError (one line): a registry from a newer schema, a corrupt file (never
recreated), a lock held past SIZEWISE_REGISTRY_TIMEOUT seconds (default 30), an unknown ID or an
ambiguous prefix (both list candidates).
"""
from __future__ import annotations

from sizewise.registry.record import record_run
from sizewise.registry.store import SCHEMA_VERSION, Registry, default_path

__all__ = ["record_run", "Registry", "default_path", "SCHEMA_VERSION"]

