"""`sizewise inspect PATH|bundled`: what a checkpoint stores, read from its headers alone.

Counts tensors and parameters by dtype and by group, bytes on disk, and, when a config is at
hand (config.json beside the safetensors, or the GGUF's metadata), checks every tensor against
the analytic inventory (sizewise.arch): a checkpoint that disagrees with its own config is an
error (exit 2). Rules: a tied lm_head stored next to the embedding counts once; quantization
scales (DeepSeek-V3's fp8 `weight_scale_inv`) are counted apart from parameters.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sizewise.errors import SizewiseError
from sizewise.io import names
from sizewise.io.bundled import resolve_path

# Roles of a stored tensor: what it counts towards.
PARAM, SCALE, TIED, IGNORED = "param", "scale", "tied_duplicate", "ignored_buffer"
MAX_LISTED_DIFFS = 20


@dataclass
class StoredTensor:
    """One checkpoint tensor in format-neutral form (GGUF merged experts stay one tensor here)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    group: str = "other"
    role: str = PARAM

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Checkpoint:
    source: str
    format: str  # "safetensors" | "gguf"
    files: list[str]
    tensors: list[StoredTensor]
    file_bytes: int
    header_bytes: int
    config: dict | None
    config_source: str | None
    config_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# ---------------------------------------------------------------- reading

def _is_gguf(p: Path) -> bool:
    if p.suffix == ".gguf":
        return True
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    return False


def read_checkpoint(spec: str) -> Checkpoint:
    """Headers of a safetensors file/dir/index or a GGUF ('bundled' = the shipped GGUF)."""
    p = resolve_path(spec)
    if not p.exists():
        raise SizewiseError(f"{p}: no such file or directory (give a .safetensors file, a model directory, an index .json, a .gguf, or 'bundled')")
    if p.is_dir() and not any(p.glob("*.safetensors")):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) > 1:
            raise SizewiseError(f"{p} holds {len(ggufs)} .gguf files and no safetensors: name one of them")
        p = ggufs[0] if ggufs else p
    return _read_gguf(p) if _is_gguf(p) else _read_safetensors(p)


def _read_gguf(p: Path) -> Checkpoint:
    from sizewise.io.gguf_meta import header_to_config, read_gguf_header

    h = read_gguf_header(p)
    cfg, err = None, None
    try:
        cfg = header_to_config(h)
    except SizewiseError as e:
        err = str(e)
    tensors = []
    for t in h.tensors:
        hf = names.gguf_to_hf_name(t.name)
        tensors.append(StoredTensor(hf or t.name, t.ggml_type, t.shape, t.nbytes))
    extra = {"architecture": h.architecture, "gguf_version": h.version,
             "name": h.metadata.get("general.name"), "file_type": h.metadata.get("general.file_type")}
    return Checkpoint(str(p), "gguf", [str(p)], tensors, h.file_bytes, h.data_start, cfg,
                      "GGUF metadata" if cfg else None, err, extra)


def _read_safetensors(p: Path) -> Checkpoint:
    from sizewise.io.safetensors_scan import scan_safetensors

    scan = scan_safetensors(p)
    tensors = [StoredTensor(t.name, t.dtype, t.shape, t.nbytes) for t in scan.tensors]
    cfg_path = (p if p.is_dir() else p.parent) / "config.json"
    cfg, src, err = None, None, None
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            src = str(cfg_path)
        except ValueError as e:
            err = f"{cfg_path}: not valid JSON ({e})"
    else:
        err = f"no config.json beside {p.name}"
    return Checkpoint(str(p), "safetensors", [str(f) for f in scan.files], tensors, scan.file_bytes,
                      scan.header_bytes, cfg, src, err, {"metadata": scan.metadata})


# ---------------------------------------------------------------- roles and groups

def _num_layers(cfg: dict | None) -> int | None:
    v = (cfg or {}).get("num_hidden_layers")
    return v if isinstance(v, int) else None


def _packed_bits(cfg: dict | None) -> int:
    """Bits per value of compressed-tensors "pack-quantized" weights (default 4)."""
    qc = (cfg or {}).get("quantization_config") or {}
    for group in (qc.get("config_groups") or {}).values():
        bits = ((group or {}).get("weights") or {}).get("num_bits")
        if isinstance(bits, int) and bits in (2, 4, 8):
            return bits
    return 4


def unpack_packed(ck: Checkpoint) -> list[str]:
    """compressed-tensors `<m>.weight_packed` (int32 words of 32/bits values along the input dim)
    stands for the parameter `<m>.weight` of the unpacked shape: count it at that shape."""
    bits = _packed_bits(ck.config)
    per_byte = {"I32": 32, "U32": 32, "I8": 8, "U8": 8, "I64": 64}
    n = 0
    for t in ck.tensors:
        if t.name.endswith(".weight_packed") and t.dtype in per_byte and t.shape:
            t.name = t.name[: -len("_packed")]
            t.shape = (*t.shape[:-1], t.shape[-1] * per_byte[t.dtype] // bits)
            n += 1
    return [f"{n:,} packed {bits}-bit weights (compressed-tensors weight_packed) counted at their unpacked shape"] if n else []


def assign_roles(ck: Checkpoint) -> list[str]:
    """Mark scales, ignored buffers and a stored copy of a tied head; set name-based groups."""
    notes: list[str] = unpack_packed(ck)
    n_layers = _num_layers(ck.config)
    tied = bool((ck.config or {}).get("tie_word_embeddings", False))
    by_name = {t.name: t for t in ck.tensors}
    for t in ck.tensors:
        t.group = names.tensor_group(t.name, n_layers)
        if names.is_scale(t.name):
            t.role = SCALE
        elif names.is_ignored_buffer(t.name):
            t.role = IGNORED
    emb, head = by_name.get("model.embed_tokens.weight"), by_name.get("lm_head.weight")
    if tied and emb is not None and head is not None and head.shape == emb.shape:
        head.role = TIED
        notes.append("lm_head.weight is stored but tie_word_embeddings is true: counted once, with the embedding")
    if tied and head is None and emb is not None:
        notes.append("tied embeddings: the LM head reuses model.embed_tokens.weight (counted once)")
    n_scale = sum(t.role == SCALE for t in ck.tensors)
    if n_scale:
        notes.append(f"{n_scale:,} quantization metadata tensors (scales, zero points; e.g. fp8 weight_scale_inv) "
                     "are counted as scales, not parameters")
    n_ign = sum(t.role == IGNORED for t in ck.tensors)
    if n_ign:
        notes.append(f"{n_ign:,} non-parameter buffers (e.g. rotary inv_freq) are ignored")
    return notes


# ---------------------------------------------------------------- comparison with the inventory

def _expanded(t: StoredTensor) -> tuple[tuple[int, ...], int]:
    """GGUF merges experts into one 3-D tensor: count it as n_expert 2-D copies."""
    if "{e}" in t.name and len(t.shape) == 3:
        return t.shape[1:], t.shape[0]
    return t.shape, 1


def _candidates(name: str) -> list[str]:
    """Most specific first: the name itself, experts templated, then layers templated too."""
    return list(dict.fromkeys([name, names.template_experts(name), names.template(name)]))


def compare_with_inventory(ck: Checkpoint, inv) -> dict:
    """Match every parameter tensor to an inventory TensorSpec by name template and shape.

    Returns {"status": "match"|"mismatch", "groups": {...}, "differences": [...]} and sets each
    matched tensor's group to the inventory's (so MTP tensors land in "mtp").
    """
    specs_by_name: dict[str, list] = defaultdict(list)
    for s in inv.tensors:
        specs_by_name[s.name].append(s)
    matched: Counter = Counter()  # id(spec) -> copies found
    unknown: dict[str, list] = defaultdict(list)  # template -> [shapes]
    shape_diff: dict[str, tuple] = {}
    ck_groups: Counter = Counter()
    for t in ck.tensors:
        if t.role != PARAM:
            continue
        shape, copies = _expanded(t)
        spec, seen_name = None, None
        for cand in _candidates(t.name):
            if cand in specs_by_name:
                seen_name = seen_name or cand
                spec = next((s for s in specs_by_name[cand] if s.shape == shape), None)
                if spec is not None:
                    break
        if spec is None:
            if seen_name is not None:
                cs, is_, n = shape_diff.get(seen_name, (shape, specs_by_name[seen_name][0].shape, 0))
                shape_diff[seen_name] = (cs, is_, n + copies)
            else:
                unknown[names.template(t.name)].append(shape)
            ck_groups[t.group] += t.numel
            continue
        t.group = spec.group
        matched[id(spec)] += copies
        ck_groups[spec.group] += t.numel
    diffs: list[dict] = []
    for tmpl, shapes in unknown.items():
        diffs.append({"kind": "only_in_checkpoint", "name": tmpl, "checkpoint_shape": list(shapes[0]),
                      "checkpoint_count": len(shapes)})
    for name, (cs, is_, n) in shape_diff.items():
        diffs.append({"kind": "shape", "name": name, "checkpoint_shape": list(cs), "checkpoint_count": n,
                      "inventory_shape": list(is_), "inventory_count": specs_by_name[name][0].copies})
    for s in inv.tensors:
        got = matched[id(s)]
        if got != s.copies and s.name not in shape_diff:
            kind = "only_in_inventory" if got == 0 else "count"
            diffs.append({"kind": kind, "name": s.name, "inventory_shape": list(s.shape),
                          "inventory_count": s.copies, "checkpoint_count": got})
    inv_groups = {g: c.total for g, c in inv.groups().items()}
    groups = {g: {"checkpoint": ck_groups.get(g, 0), "inventory": inv_groups.get(g, 0)}
              for g in list(inv_groups) + [g for g in ck_groups if g not in inv_groups]}
    return {"status": "mismatch" if diffs else "match", "inventory": inv.name, "inventory_total": inv.total,
            "groups": groups, "differences": diffs}


def _inventory_for(ck: Checkpoint):
    """The analytic inventory, or (None, reason) when there is no config or no family for it."""
    if ck.config is None:
        return None, ck.config_error or "no config available"
    try:
        from sizewise.arch.families import inventory_from_config
    except ImportError:
        return None, "sizewise.arch is not available in this build"
    try:
        return inventory_from_config(ck.config, Path(ck.source).name), None
    except SizewiseError as e:
        return None, str(e)


# ---------------------------------------------------------------- report

def inspect_report(spec: str) -> dict:
    """Everything `inspect` prints, as a JSON-ready dict (comparison included when possible)."""
    ck = read_checkpoint(spec)
    notes = assign_roles(ck)
    inv, reason = _inventory_for(ck)
    comparison = compare_with_inventory(ck, inv) if inv is not None else {"status": "skipped", "reason": reason}
    by_dtype: dict[str, dict] = {}
    by_group: dict[str, dict] = {}
    scales = {"tensors": 0, "values": 0, "bytes": 0}
    for t in ck.tensors:
        if t.role == SCALE:
            scales["tensors"] += 1
            scales["values"] += t.numel
            scales["bytes"] += t.nbytes
            continue
        if t.role != PARAM:
            continue
        for key, table in ((t.dtype, by_dtype), (t.group, by_group)):
            row = table.setdefault(key, {"tensors": 0, "params": 0, "bytes": 0})
            row["tensors"] += 1
            row["params"] += t.numel
            row["bytes"] += t.nbytes
    from sizewise.arch.inventory import GROUPS
    order = {g: i for i, g in enumerate(GROUPS)}
    by_group = dict(sorted(by_group.items(), key=lambda kv: order.get(kv[0], len(order))))
    total = sum(r["params"] for r in by_dtype.values())
    return {
        "source": ck.source,
        "format": ck.format,
        "files": ck.files,
        "tensors": len(ck.tensors),
        "params": {"total": total},  # docs/vocabulary.md: the name estimate uses
        "bytes_on_disk": ck.file_bytes,
        "parameters": total,  # deprecated alias of params.total (one release)
        "param_bytes": sum(r["bytes"] for r in by_dtype.values()),
        "scales": scales,
        "file_bytes": ck.file_bytes,  # deprecated alias of bytes_on_disk (one release)
        "data_bytes": ck.data_bytes,
        "header_bytes": ck.header_bytes,
        "by_dtype": dict(sorted(by_dtype.items())),
        "by_group": by_group,
        "config_source": ck.config_source,
        "comparison": comparison,
        "notes": notes,
        **({"gguf": ck.extra} if ck.format == "gguf" else {}),
    }


def _gb(n: int) -> str:
    from sizewise.units import fmt_bytes
    return fmt_bytes(n)


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{report['source']}[/] ({report['format']}, {len(report['files'])} file(s), {report['tensors']:,} tensors)")
    if report.get("gguf"):
        g = report["gguf"]
        con.print(f"GGUF v{g['gguf_version']}, architecture {g['architecture']!r}, name {g['name']!r}")
    con.print(f"parameters: [bold]{report['parameters']:,}[/]  (tied embeddings counted once)")
    mtp = report["by_group"].get("mtp", {}).get("params", 0)
    if mtp:
        con.print(f"  of which multi-token-prediction layer(s): {mtp:,}; without them: {report['parameters'] - mtp:,}")
    s = report["scales"]
    if s["tensors"]:
        con.print(f"scales: {s['tensors']:,} tensors, {s['values']:,} values, {_gb(s['bytes'])}")
    con.print(f"on disk: {_gb(report['file_bytes'])} in files; tensor data {_gb(report['data_bytes'])}; "
              f"headers and padding {report['file_bytes'] - report['data_bytes']:,} bytes")

    t = Table(title="parameters by dtype")
    for c in ("dtype", "tensors", "parameters", "bytes", "bits/param"):
        t.add_column(c, justify="left" if c == "dtype" else "right")
    for d, r in report["by_dtype"].items():
        t.add_row(d, f"{r['tensors']:,}", f"{r['params']:,}", f"{r['bytes']:,}",
                  f"{8 * r['bytes'] / r['params']:.3f}" if r["params"] else "-")
    con.print(t)

    cmp_ = report["comparison"]
    t = Table(title="parameters by group")
    cols = ["group", "tensors", "parameters", "bytes"] + (["inventory", "match"] if cmp_["status"] != "skipped" else [])
    for c in cols:
        t.add_column(c, justify="left" if c == "group" else "right")
    groups = dict(report["by_group"])
    inv_groups = cmp_.get("groups", {})
    for g in inv_groups:
        groups.setdefault(g, {"tensors": 0, "params": 0, "bytes": 0})
    for g, r in groups.items():
        row = [g, f"{r['tensors']:,}", f"{r['params']:,}", f"{r['bytes']:,}"]
        if cmp_["status"] != "skipped":
            inv_n = inv_groups.get(g, {}).get("inventory", 0)
            row += [f"{inv_n:,}", "[green]yes[/]" if inv_n == r["params"] else "[red]no[/]"]
        t.add_row(*row)
    con.print(t)

    for n in report["notes"]:
        con.print(f"note: {n}")
    if cmp_["status"] == "skipped":
        con.print(f"comparison with the analytic inventory skipped: {cmp_['reason']}")
    elif cmp_["status"] == "match":
        con.print(f"[green]matches[/] the analytic inventory from {report['config_source']} "
                  f"({cmp_['inventory_total']:,} parameters)")
    else:
        _render_diffs(con, cmp_["differences"])


def _render_diffs(con, diffs: list[dict]) -> None:
    """One unwrapped line per difference, so that long tensor names stay greppable."""
    con.print(f"[red]differences from the analytic inventory ({len(diffs)}):[/]")
    for d in diffs[:MAX_LISTED_DIFFS]:
        ck = (f"{d.get('checkpoint_count', 1)} x {tuple(d['checkpoint_shape'])}" if "checkpoint_shape" in d
              else f"{d.get('checkpoint_count', 0)} found")
        iv = f"{d.get('inventory_count', 1)} x {tuple(d['inventory_shape'])}" if "inventory_shape" in d else "none"
        con.print(f"  {d['kind']:<18} {d['name']}: checkpoint {ck}, inventory {iv}", soft_wrap=True, markup=False)
    if len(diffs) > MAX_LISTED_DIFFS:
        con.print(f"  ... and {len(diffs) - MAX_LISTED_DIFFS} more (use --json for all)")


def inspect_command(path: str, json_out: bool = False) -> None:
    report = inspect_report(path)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    cmp_ = report["comparison"]
    if cmp_["status"] == "mismatch":
        kinds = Counter(d["kind"] for d in cmp_["differences"])
        raise SizewiseError(f"{report['source']} does not match its config ({report['config_source']}): "
                            + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in kinds.items())
                            + "; fix the config or re-download the checkpoint")
