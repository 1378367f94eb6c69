"""Load a runnable model + tokenizer from what users have: the bundled GGUF, a .gguf file, an HF
directory, or a sizewise-compressed directory (one with sizewise.json).

Memory: `dtype="auto"` keeps an HF checkpoint in its stored dtype (bf16/fp16 stay 2 bytes per
weight), so compressing a bf16 model never builds a full fp32 copy first; transformers loads
onto the meta device and fills tensors one by one. A GGUF is dequantized tensor by tensor into
the requested dtype. Load time is measured, since it is part of what a variant costs.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sizewise.errors import SizewiseError
from sizewise.io.bundled import resolve_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time

MANIFEST = "sizewise.json"
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16"}


@dataclass
class LoadedModel:
    model: "object"  # transformers PreTrainedModel (or a sizewise-compressed one)
    tokenizer: "object"
    source: Path
    kind: str  # "gguf" | "hf" | "sizewise"
    load_s: float = 0.0  # wall seconds to load model + tokenizer
    manifest: dict | None = None  # sizewise.json of a compressed directory


def resolve_dtype(dtype):
    """None -> fp32; "auto" stays "auto"; names like "bf16" -> torch dtypes; torch dtypes pass."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        if dtype not in DTYPE_NAMES:
            raise SizewiseError(f"unknown dtype {dtype!r}: choose fp32, bf16, fp16 or auto")
        return getattr(torch, DTYPE_NAMES[dtype])
    return dtype


@contextlib.contextmanager
def _quiet():
    """transformers' GGUF dequantization draws its own tqdm bar: keep the CLI's output ours."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - transformers without GGUF support
        gguf_utils = None
    orig = getattr(gguf_utils, "tqdm", None)
    if orig is not None:
        gguf_utils.tqdm = lambda it, *a, **k: it  # its bar ignores transformers' disable_progress_bar
    try:
        yield
    finally:
        if orig is not None:
            gguf_utils.tqdm = orig


def stored_dtype(path: Path) -> str | None:
    """The dtype an HF directory's config says its weights are stored in, if it says."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("dtype") or cfg.get("torch_dtype")


def load_model(spec: str, dtype: "object" = None) -> LoadedModel:
    """spec: 'bundled', a .gguf file, an HF directory or a sizewise directory.

    dtype: None/fp32 (default; the reference precision), bf16, fp16, or "auto" (HF: as stored,
    the low-memory path; GGUF: fp32). A sizewise directory loads as saved (packed modules)."""
    t0 = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    import torch

    dtype = resolve_dtype(dtype)
    path = resolve_path(spec)
    if not path.exists():
        raise SizewiseError(f"model not found: {path} (give a .gguf file, an HF directory, or 'bundled')")
    if path.is_dir() and (path / MANIFEST).is_file():
        from sizewise.compression.checkpoint import load_compressed

        model, tok, manifest = load_compressed(path)
        if tok is None:
            raise SizewiseError(f"{path} has no tokenizer files: re-save it with its tokenizer")
        return LoadedModel(model.eval(), tok, path, "sizewise", time.perf_counter() - t0, manifest)
    if path.is_file() and path.suffix == ".gguf":
        with _quiet():
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32 if dtype == "auto" else dtype)
        return LoadedModel(model.eval(), tok, path, "gguf", time.perf_counter() - t0)
    if path.is_dir() and (path / "config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - transformers raises many types here
            raise SizewiseError(f"no usable tokenizer in {path}: add tokenizer.json / tokenizer_config.json ({e.__class__.__name__})")
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return LoadedModel(model.eval(), tok, path, "hf", time.perf_counter() - t0)
    raise SizewiseError(f"cannot load {path}: expected a .gguf file, a directory with config.json, "
                        "or a sizewise directory (with sizewise.json)")
