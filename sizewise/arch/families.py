"""config.json -> ParamInventory: dispatch on `model_type` to one function per family.

Pure Python (no torch): the estimate path must answer for a 671B model in milliseconds.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from sizewise.arch import deepseek, llama, mixtral, qwen
from sizewise.arch.inventory import ParamInventory, TensorSpec
from sizewise.errors import SizewiseError

FAMILIES: dict[str, Callable[[dict, str], ParamInventory]] = {
    "llama": llama.llama,
    "mistral": llama.mistral,
    "mixtral": mixtral.mixtral,
    "qwen2": qwen.qwen2,
    "qwen3": qwen.qwen3,
    "qwen3_moe": qwen.qwen3_moe,
    "deepseek": deepseek.deepseek,
    "deepseek_v2": deepseek.deepseek_v2,
    "deepseek_v3": deepseek.deepseek_v3,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)


def _family(cfg: dict) -> Callable[[dict, str], ParamInventory]:
    if not isinstance(cfg, dict):
        raise SizewiseError(f"a model config must be a JSON object, got {type(cfg).__name__}: "
                            "pass the model's config.json")
    mt = cfg.get("model_type")
    if not mt:
        raise SizewiseError("config field 'model_type' is missing: add it to config.json "
                            f"(one of {', '.join(SUPPORTED_MODEL_TYPES)})")
    if mt not in FAMILIES:
        raise SizewiseError(f"model_type {mt!r} is not supported for estimates "
                            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); "
                            "`sizewise inspect` still counts a checkpoint's parameters from its tensor headers")
    return FAMILIES[mt]


def validate_config(cfg: dict) -> None:
    """Raise SizewiseError naming the first missing, malformed or non-positive field."""
    _family(cfg)(cfg, "")


def inventory_from_config(cfg: dict, name: str = "") -> ParamInventory:
    """The exact tensor inventory the published checkpoint of this config stores."""
    return _family(cfg)(cfg, name or str(cfg.get("_name_or_path") or cfg.get("model_type")))


@lru_cache(maxsize=4096)
def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{[ie]\})", template)
    return re.compile("".join(r"(\d+)" if p in ("{i}", "{e}") else re.escape(p) for p in parts) + r"\Z")


def match_tensor(inv: ParamInventory, tensor_name: str) -> TensorSpec | None:
    """The TensorSpec whose name template matches a real checkpoint tensor name, or None.

    The most specific template wins (fewest placeholders): the MTP layer's `model.layers.61.*` names beat `{i}`, so a
    checkpoint's MTP tensors land in group "mtp" and not in "attention"/"routed_experts".
    """
    best: TensorSpec | None = None
    best_holes = 99
    for t in inv.tensors:
        holes = t.name.count("{")
        if holes < best_holes and _pattern(t.name).match(tensor_name):
            best, best_holes = t, holes
    return best
