"""Load a runnable model + tokenizer from what users have: the bundled GGUF, a .gguf file, or an HF directory.

Owner: evaluation work extends this (compressed sizewise directories, low-memory paths).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sizewise.errors import SizewiseError
from sizewise.io.bundled import resolve_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time


@dataclass
class LoadedModel:
    model: "object"  # transformers PreTrainedModel (or a sizewise-compressed one)
    tokenizer: "object"
    source: Path
    kind: str  # "gguf" | "hf" | "sizewise"


def load_model(spec: str, dtype: "object" = None) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = dtype or torch.float32
    path = resolve_path(spec)
    if not path.exists():
        raise SizewiseError(f"model not found: {path} (give a .gguf file, an HF directory, or 'bundled')")
    if path.is_file() and path.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        return LoadedModel(model.eval(), tok, path, "gguf")
    if path.is_dir() and (path / "config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - transformers raises many types here
            raise SizewiseError(f"no usable tokenizer in {path}: add tokenizer.json / tokenizer_config.json ({e.__class__.__name__})")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return LoadedModel(model.eval(), tok, path, "hf")
    raise SizewiseError(f"cannot load {path}: expected a .gguf file or a directory with config.json")
