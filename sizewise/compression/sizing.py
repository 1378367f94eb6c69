"""Bytes on disk of a compressed checkpoint next to `estimate`'s prediction for the same tensors.

Each stored tensor of the manifest is priced with sizewise.size.formats.tensor_bytes in the format
its scheme corresponds to (int4-gG-asym -> int4-gG, int8-* -> int8, float tensors -> their dtype),
so the policy (which tensors stay float, in which dtype, which layers fell back to a smaller group)
is exactly the checkpoint's. formats.py prices the int4 zero point as fp16 (2 B/group, the
torchao/gpt-fast layout); this checkpoint packs integer zero points as compressed-tensors does
(0.5 B/group), so we also report the estimate with that one difference applied ("layout").
"""
from __future__ import annotations

import re
from math import ceil

_INT4 = re.compile(r"^int4-g(\d+)-asym$")


def scheme_format(scheme: str) -> str | None:
    m = _INT4.match(scheme)
    if m:
        return f"int4-g{m.group(1)}"
    if scheme in ("int8-wo", "int8-dyn", "int8-static"):
        return "int8"
    if scheme in ("fp32", "fp16", "bf16"):
        return scheme
    return None


def estimate_bytes(manifest: dict) -> dict:
    """{"estimate": formats.py bytes, "layout": with packed int4 zero points, "unpriced": [schemes]}."""
    from sizewise.arch.inventory import TensorSpec
    from sizewise.size.formats import get_format, tensor_bytes

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
        if fmt.startswith("int4"):
            f = get_format(fmt)
            rows, groups = shape[0], ceil(shape[-1] / f.group)
            b -= rows * groups * f.zero_bytes - ceil(rows / 8) * groups * 4  # packed int32 zero points
        layout += b
    return {"estimate": est, "layout": layout, "unpriced": sorted(unpriced)}
