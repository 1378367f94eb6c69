"""Bytes on disk of a compressed checkpoint next to `estimate`'s prediction for the same tensors.

Each stored tensor of the manifest is priced with sizewise.size.formats.tensor_bytes in the format
its scheme corresponds to (int4-gG-fz -> int4-gG, int4-gG-asym -> int4-ct-gG, int8-* -> int8, float
tensors -> their dtype),
so the policy (which tensors stay float, in which dtype, which layers fell back to a smaller group)
is exactly the checkpoint's. formats.py prices int4 in the two layouts checkpoints use (bf16 scale +
bf16 zero; compressed-tensors' bf16 scale + 4-bit zero point packed 8 per int32), so "layout" == "estimate".
"""
from __future__ import annotations

import re

_INT4 = re.compile(r"^int4-g(\d+)-(asym|fz)$")


def scheme_format(scheme: str) -> str | None:
    if scheme == "int4-g32-s6":  # formats.py prices the coded layout for groups of 32
        return scheme
    m = _INT4.match(scheme)
    if m:
        return f"int4-{'ct-' if m.group(2) == 'asym' else ''}g{m.group(1)}"
    if scheme in ("int8-wo", "int8-wo-pack", "int8-dyn", "int8-static", "int8-embed"):
        return "int8"
    if scheme in ("fp32", "fp16", "bf16"):
        return scheme
    return None


def estimate_bytes(manifest: dict) -> dict:
    """{"estimate": formats.py bytes, "layout": the same (kept for the JSON schema), "unpriced": [schemes]}."""
    from sizewise.arch.inventory import TensorSpec
    from sizewise.size.formats import tensor_bytes

    est = layout = 0
    unpriced: set[str] = set()
    for name, t in manifest.get("tensors", {}).items():
        fmt = scheme_format(t["scheme"])
        shape = tuple(int(d) for d in t["shape"]) or (1,)
        if fmt is None:
            unpriced.add(t["scheme"])
            continue
        spec = TensorSpec(name=name, shape=shape, copies=1, group="mlp", kind="linear")
        b = tensor_bytes(spec, fmt, tied=False, keep_kinds=())
        est += b
        layout += b
    return {"estimate": est, "layout": layout, "unpriced": sorted(unpriced)}
