"""The Python API: `sizewise.compress(model, config)` and `sizewise.load(dir)`.

    import sizewise
    model = sizewise.compress(model, "int4-g128")          # or a config: Int4WeightOnlyConfig(group_size=64)
    model, tok, manifest = sizewise.load("out/smollm2-int4")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def compress(model: Any, config: Any = "int8-wo", calib_tokens: Any = None) -> Any:
    """Quantize `model` (a transformers causal LM) in place; `config` is a recipe name, a recipe
    file path, or a config dataclass from sizewise.compression.recipes. Returns the model."""
    from sizewise.compression.apply import compress as _compress
    from sizewise.compression.recipes import BaseConfig, get_recipe

    cfg = config if isinstance(config, BaseConfig) else get_recipe(str(config))
    return _compress(model, cfg, calib_tokens=calib_tokens)


def save(model: Any, tokenizer: Any, out_dir: str | Path, parent: str | Path | None = None,
         force: bool = False, metrics: dict | None = None) -> dict:
    """Write a compressed model as a self-contained sizewise directory; returns the manifest."""
    from sizewise.compression.checkpoint import save_compressed

    return save_compressed(model, tokenizer, out_dir, None, parent, metrics=metrics, force=force)


def load(path: str | Path) -> tuple[Any, Any, dict]:
    """(model, tokenizer, manifest) from a directory written by `sizewise compress` / `save`."""
    from sizewise.compression.checkpoint import load_compressed

    return load_compressed(path)
