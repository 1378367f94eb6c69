"""Byte units, printed both ways: GB (10^9) and GiB (2^30) are 7 % apart, and mixing them is the
most common error in published model sizes, so every size sizewise prints carries both labels."""
from __future__ import annotations

import re

from sizewise.errors import SizewiseError

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

_UNITS = {
    "b": 1, "": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
}


def fmt_bytes(n: int | float) -> str:
    """'32.00 GB (29.80 GiB)': decimal first, binary in brackets, both always labelled."""
    n = float(n)
    for dec, bin_, dn, bn in ((TB, TiB, "TB", "TiB"), (GB, GiB, "GB", "GiB"), (MB, MiB, "MB", "MiB"),
                              (KB, KiB, "kB", "KiB")):
        if abs(n) >= dec:
            return f"{n / dec:.2f} {dn} ({n / bin_:.2f} {bn})"
    return f"{n:.0f} B"


def fmt_gb(n: int | float) -> str:
    """Short table cell: '32.00 GB'."""
    return f"{n / GB:,.2f} GB"


def fmt_gib(n: int | float) -> str:
    return f"{n / GiB:,.2f} GiB"


def parse_size(text: str) -> int:
    """'80GiB' | '80GB' | '512MiB' | '1.5 TB' | '1024' (bytes) -> bytes. Units are case-insensitive."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise SizewiseError(f"cannot read size {text!r}: write a number and a unit, e.g. 80GiB, 80GB or 512MiB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise SizewiseError(f"size {text!r} must be positive (at least 1 byte)")
    return int(round(value))
