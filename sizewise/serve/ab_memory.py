"""Does every A/B variant fit in this machine's memory? Checked before any variant loads.

Why before: loading a second 2 GB model into a machine that has room for one ends in the OOM
killer minutes later, with the first model's load time wasted. The numbers come from the same
arithmetic `sizewise estimate` uses (sizewise/size): weights tensor by tensor in the format the
variant is held in, plus the KV pool each engine preallocates, plus transient activations.
Variants load one after another, so only the largest load-time surplus (fp32 weights before an
in-memory recipe shrinks them) counts once. The CUDA runtime overhead of `estimate` is left out:
this engine runs on the CPU.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sizewise.errors import SizewiseError
from sizewise.units import fmt_bytes, parse_size

ENV_AVAILABLE = "SIZEWISE_AVAILABLE_MEMORY"  # override what the machine reports (tests; a cgroup limit psutil misses)


@dataclass
class MemoryNeed:
    name: str
    weights: int  # resident once loaded (and compressed in memory)
    load_peak: int  # weights held while loading, before an in-memory recipe
    kv_pool: int
    activations: int
    how: str

    @property
    def resident(self) -> int:
        return self.weights + self.kv_pool + self.activations


def recipe_format(recipe: str | None, dtype: str) -> str:
    """The storage format (sizewise/size/formats.py) a recipe leaves the weights in; dtype when unknown."""
    if not recipe:
        return dtype
    if recipe in ("fp32", "fp16", "bf16"):
        return recipe
    if recipe.startswith("int8") or recipe == "torch-dynamic":
        return "int8"
    m = re.match(r"int4-(ct-)?(?:gptq-|imatrix-)?g(32|64|128)", recipe)
    if m:
        return f"int4-{m.group(1) or ''}g{m.group(2)}"
    return dtype  # a recipe file: count it at load precision (an upper bound)


def available_memory() -> int:
    """$SIZEWISE_AVAILABLE_MEMORY, else psutil's available, else /proc/meminfo's MemAvailable."""
    if os.environ.get(ENV_AVAILABLE):
        return parse_size(os.environ[ENV_AVAILABLE])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise SizewiseError(f"cannot tell how much memory is available: install psutil or set {ENV_AVAILABLE}")


def variant_need(name: str, source: str, recipe: str | None, dtype: str, kv_bytes: int,
                 max_batch: int, context: int = 4096) -> MemoryNeed:
    """Estimated memory of one variant (see the module docstring for what is counted)."""
    src = Path(source)
    if src.is_dir() and (src / "sizewise.json").is_file():  # a compressed checkpoint loads packed, as stored
        w = sum(f.stat().st_size for f in src.glob("*.safetensors"))
        return MemoryNeed(name, w, w, kv_bytes, 0, "tensor bytes on disk (packed checkpoint)")
    from sizewise.arch.resolve import inventory_for
    from sizewise.size.formats import size_in_format
    from sizewise.size.memory import inference_memory

    inv = inventory_for(source)
    mem = inference_memory(inv, dtype, context, max_batch)
    fmt = recipe_format(recipe, dtype)
    resident = mem.weights if fmt == dtype else size_in_format(inv, fmt, high_precision=dtype).bytes
    return MemoryNeed(name, resident, mem.weights, kv_bytes, mem.activations,
                      f"{fmt} weights from the parameter inventory" + (f" (loaded as {dtype})" if fmt != dtype else ""))


def check_memory(needs: list[MemoryNeed], available: int | None = None) -> dict:
    """Raise one line when the variants do not fit; else return the accounting."""
    avail = available_memory() if available is None else available
    surplus = max((n.load_peak - n.weights for n in needs), default=0)
    total = sum(n.resident for n in needs) + max(surplus, 0)
    acct = {"available_bytes": avail, "needed_bytes": total, "load_surplus_bytes": surplus,
            "variants": {n.name: {"weights": n.weights, "load_peak": n.load_peak, "kv_pool": n.kv_pool,
                                  "activations": n.activations, "how": n.how} for n in needs}}
    if total > avail:
        parts = "; ".join(f"{n.name}: weights {fmt_bytes(n.weights)} + KV {fmt_bytes(n.kv_pool)} + "
                          f"activations {fmt_bytes(n.activations)}" for n in needs)
        raise SizewiseError(f"the {len(needs)} A/B variants need about {fmt_bytes(total)} ({parts}; "
                            f"+{fmt_bytes(max(surplus, 0))} while loading) but {fmt_bytes(avail)} is available: "
                            "drop a variant, lower --kv-memory, or serve compressed checkpoints")
    return acct
