"""Reading config.json fields with one clear error per mistake.

Every family reads its numbers through these helpers so that a missing, mistyped or
non-positive field is reported by name, with what to do, instead of a KeyError deep inside.
"""
from __future__ import annotations

from typing import Any

from sizewise.errors import SizewiseError


def _is_int(v: Any) -> bool:
    # JSON has no int/float split for values like 4096.0; accept those, reject bools and 4096.5.
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, float) and v.is_integer()


def req_int(cfg: dict, key: str, minimum: int = 1) -> int:
    """A required integer field, at least `minimum` (1 unless zero is meaningful)."""
    if key not in cfg or cfg[key] is None:
        raise SizewiseError(f"config field '{key}' is missing: add it to config.json "
                            f"(an integer >= {minimum}, as in the model's published config)")
    return _check_int(key, cfg[key], minimum)


def opt_int(cfg: dict, key: str, default: int | None, minimum: int = 1) -> int | None:
    """An optional integer field: absent or null gives `default`."""
    v = cfg.get(key)
    if v is None:
        return default
    return _check_int(key, v, minimum)


def opt_bool(cfg: dict, key: str, default: bool) -> bool:
    v = cfg.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise SizewiseError(f"config field '{key}' must be true or false, got {v!r}: fix it in config.json")
    return v


def int_list(cfg: dict, key: str) -> list[int]:
    """An optional list of non-negative integers (e.g. qwen3_moe's mlp_only_layers)."""
    v = cfg.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(_is_int(x) and x >= 0 for x in v):
        raise SizewiseError(f"config field '{key}' must be a list of layer indices, got {v!r}: fix it in config.json")
    return [int(x) for x in v]


def _check_int(key: str, v: Any, minimum: int) -> int:
    if not _is_int(v):
        raise SizewiseError(f"config field '{key}' must be an integer, got {v!r}: fix it in config.json")
    if v < minimum:
        raise SizewiseError(f"config field '{key}' is {int(v)} but must be >= {minimum}: fix it in config.json")
    return int(v)
