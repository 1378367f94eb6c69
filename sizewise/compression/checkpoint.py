"""Compressed checkpoints: a self-contained directory that `load_compressed` turns back into the same model.

Layout (DESIGN.md "Compressed checkpoint format"):
  config.json          the HF config + `quantization_config` (compressed-tensors style, see below)
  model.safetensors    or model-0000i-of-0000n.safetensors + model.safetensors.index.json when large
  sizewise.json        manifest: parent, recipe, versions, per-tensor scheme/shape, per-module
                       scheme/meta (what the loader needs), fallbacks, metrics
  tokenizer files      so the directory loads on its own

Packed modules store what `packed_tensors()` gives under `<module>.<suffix>` (compressed-tensors
names: weight_packed/weight_scale/weight_zero_point/weight_shape for int4 with integer zero points,
weight_zero (bf16) in place of weight_zero_point for the float-zero int4 layout, which compressed-tensors
does not have and which is therefore listed under "sizewise_schemes"; weight/weight_scale for int8,
input_scale for static activations) and their bias as `<module>.bias`. Every other tensor is
stored as it is in the model. Tied tensors (lm_head = embed_tokens) are stored once.
Everything is written into a temp dir and os.replace'd into place (sizewise.io.atomic.atomic_dir).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sizewise.compression import packed as P
from sizewise.errors import SizewiseError

MANIFEST = "sizewise.json"
INDEX = "model.safetensors.index.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 2 * 10**9
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def dtype_name(dt: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dt, str(dt).replace("torch.", ""))


# --- hashing the parent ---

def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def parent_record(parent: str | Path | None) -> dict:
    """{"path", "sha256", "sha256_of"}: a file's own hash; for a directory, the hash of
    "name sha256\\n" lines over its config.json and *.safetensors files in sorted order."""
    if parent is None:
        return {"path": None, "sha256": None}
    p = Path(parent).resolve()
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p), "sha256_of": "file"}
    if p.is_dir():
        files = sorted([*p.glob("*.safetensors"), *p.glob("config.json")])
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name} {sha256_file(f)}\n".encode())
        return {"path": str(p), "sha256": h.hexdigest(), "sha256_of": "dir: sha256 of 'name sha256' lines of config.json + *.safetensors"}
    return {"path": str(p), "sha256": None}


def check_out_path(out_dir: str | Path, parent: str | Path | None) -> None:
    """--out must not be the input, nor a directory that contains it (--force would delete it)."""
    if parent is None:
        return
    out, src = Path(out_dir).resolve(), Path(parent).resolve()
    if out == src or src.is_relative_to(out):
        raise SizewiseError(f"--out {out_dir} would overwrite the input {parent}: choose a new output directory")


def publish_modes(d: Path) -> None:
    """The temp dir is created 0700 and some writers use 0600 files: give the finished checkpoint the
    modes a normal directory/file would get under the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for f in d.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def versions() -> dict:
    import transformers

    import sizewise
    return {"sizewise": getattr(sizewise, "__version__", "0"), "torch": torch.__version__,
            "transformers": transformers.__version__}


# --- what a model stores ---

def packed_modules(model: nn.Module) -> dict[str, P.PackedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, P.PackedLinear)}


def packed_record(name: str, mod: P.PackedLinear) -> tuple[dict, dict[str, torch.Tensor], dict[str, dict], dict[str, str]]:
    """One packed module -> (its `modules` entry, tensors to store, `tensors` manifest entries, aliases).
    Shared by save_compressed and the streaming writer, so the two write the same bytes."""
    entry = {"scheme": mod.scheme, "kernel": mod.kernel, "meta": mod.packed_meta()}
    if getattr(mod, "tied_to", None):  # a head that is the embedding's int8 table: stored once
        return entry, {}, {}, {f"{name}.weight": f"{mod.tied_to}.weight"}
    out = {f"{name}.{suffix}": t.contiguous() for suffix, t in mod.packed_tensors().items()}
    manifest = {}
    if mod.bias is not None:
        out[f"{name}.bias"] = mod.bias.detach().contiguous()
        manifest[f"{name}.bias"] = {"scheme": dtype_name(mod.bias.dtype), "shape": list(mod.bias.shape)}
    manifest[f"{name}.weight"] = {"scheme": mod.scheme, "shape": [mod.out_features, mod.in_features]}
    return entry, out, manifest, {}


def collect_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict[str, dict], dict[str, str]]:
    """-> (tensors to store, modules {name: {scheme, kernel, meta}}, tensors manifest, aliases)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    if any(isinstance(m, DynLinear) for m in model.modules()):
        raise SizewiseError("torch-dynamic is a baseline for `sizewise eval`, it has no checkpoint format: "
                            "use int8-dyn (per-token W8A8 on torch._int_mm) to save an int8 model")
    packs = packed_modules(model)
    out: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    manifest: dict[str, dict] = {}
    aliases: dict[str, str] = {}
    for name, mod in packs.items():
        modules[name], tensors, entries, alias = packed_record(name, mod)
        out.update(tensors)
        manifest.update(entries)
        aliases.update(alias)
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        if any(key.startswith(n + ".") for n in packs):
            continue
        ptr = (t.data_ptr(), tuple(t.shape), t.dtype) if t.numel() else None
        if ptr is not None and ptr in seen:
            aliases[key] = seen[ptr]  # tied: stored once, re-tied by the model on load
            continue
        seen[ptr] = key
        out[key] = t.detach().contiguous()
        manifest[key] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}
    return out, modules, manifest, aliases


def _write_safetensors(tensors: dict[str, torch.Tensor], d: Path, shard_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= shard_bytes:
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        nb = t.numel() * t.element_size()
        if size and size + nb > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nb
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(d / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names


def quantization_config(modules: dict[str, dict], ignore: list[str]) -> dict | None:
    """compressed-tensors `quantization_config`: one config group per scheme, targets = module names.

    Deviations: activation schemes name our kernels' behaviour (per-token dynamic, static tensor/channel)
    in compressed-tensors terms; sizewise-only schemes (sparse ones registered by other modules) are
    listed with their scheme string under "sizewise_schemes" rather than as a group."""
    if not modules:
        return None
    groups: dict[str, dict] = {}
    other: dict[str, list[str]] = {}
    formats = set()
    for name, m in modules.items():
        s, meta = m["scheme"], m["meta"]
        if s.startswith("int4-g") and s.endswith("-asym"):
            w = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                 "group_size": meta["group_size"], "dynamic": False, "observer": "minmax"}
            a, fmt = None, "pack-quantized"
        elif s in ("int8-wo", "int8-dyn", "int8-static"):
            w = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False,
                 "observer": "minmax"}
            a = None
            if s == "int8-dyn":
                a = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
            elif s == "int8-static":
                a = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": meta.get("input_strategy", "tensor"),
                     "dynamic": False, "observer": "minmax"}
            fmt = "int-quantized"
        elif s == "int8-wo-pack":  # W8A16 as vLLM's WNA16 path reads it (packed.Int8PackedWeightOnlyLinear)
            w = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False,
                 "observer": "minmax"}
            a, fmt = None, "pack-quantized"
        else:
            other.setdefault(s, []).append(name)
            continue
        formats.add(fmt)
        g = groups.setdefault(s, {"targets": [], "weights": w, "input_activations": a,
                                  "output_activations": None, "format": fmt})
        g["targets"].append(name)
    qc: dict[str, Any] = {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())},
        "ignore": ignore,
    }
    if other:
        qc["sizewise_schemes"] = other
    return qc


def save_compressed(model: nn.Module, tokenizer, out_dir: str | Path, recipe: dict | None,
                    parent_path: str | Path | None, metrics: dict | None = None, force: bool = False,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, extra: dict | None = None) -> dict:
    """Write the directory atomically; returns the manifest."""
    from sizewise.io.atomic import atomic_dir

    check_out_path(out_dir, parent_path)
    tensors, modules, tmanifest, aliases = collect_tensors(model)
    rec = getattr(model, "sizewise_compression", None)
    manifest = {
        "format": FORMAT_VERSION,
        "parent": parent_record(parent_path),
        "recipe": recipe if recipe is not None else (rec.recipe if rec else {}),
        "recipe_name": rec.recipe_name if rec else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "tensors": tmanifest,
        "modules": modules,
        "aliases": aliases,
        "fallbacks": rec.fallbacks if rec else {},
        "kept_float": rec.kept if rec else {},
        "calibration": rec.calibration if rec else None,
        "metrics": metrics or {},
    }
    if extra:
        manifest.update(extra)
    ignore = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not P.is_packed(m))  # kept heads too
    with atomic_dir(out_dir, force=force) as tmp:
        files = _write_safetensors(tensors, tmp, shard_bytes)
        cfg = model.config.to_dict()
        qc = quantization_config(modules, ignore)
        if qc:
            cfg["quantization_config"] = qc
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        manifest["files"] = files
        manifest["bytes_on_disk"] = sum((tmp / f).stat().st_size for f in files)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        publish_modes(tmp)
    return manifest


# --- loading ---

def read_manifest(d: str | Path) -> dict:
    p = Path(d) / MANIFEST
    if not p.is_file():
        raise SizewiseError(f"{d} is not a sizewise checkpoint (no {MANIFEST}): compress a model into it first")
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SizewiseError(f"{p} is not valid JSON ({e.msg}): the checkpoint is damaged, compress again")
    if m.get("format") != FORMAT_VERSION:
        raise SizewiseError(f"{p} has format {m.get('format')!r}, this sizewise reads format {FORMAT_VERSION}")
    return m


def read_tensors(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors (or its shards), with damage reported as one line."""
    from safetensors.torch import load_file

    index = d / INDEX
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise SizewiseError(f"{index} is damaged ({e.__class__.__name__}): compress again")
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        p = d / f
        if not p.is_file():
            raise SizewiseError(f"{p} is missing: the checkpoint is incomplete, compress again")
        try:
            out.update(load_file(str(p)))
        except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError and others
            raise SizewiseError(f"{p} is corrupt or truncated ({str(e).splitlines()[0][:120]}): compress again")
    return out


def build_skeleton(config_dict: dict) -> nn.Module:
    """The model class from config.json with parameters on the meta device (buffers real: rotary tables)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config_dict)
    cfg.pop("quantization_config", None)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise SizewiseError("config.json has no model_type: the checkpoint is damaged")
    config = AutoConfig.for_model(model_type, **cfg)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    return model


def load_compressed(d: str | Path) -> tuple[nn.Module, Any, dict]:
    """Rebuild a saved model on the same kernels -> (model, tokenizer, manifest)."""
    from sizewise.compression.apply import set_module
    import sizewise.compression.share  # noqa: F401  (registers the shared-mask scheme)
    import sizewise.compression.sparse  # noqa: F401  (registers the sparse schemes)
    from sizewise.compression.token_table import retie  # (also registers the int8 token-table schemes)

    d = Path(d)
    manifest = read_manifest(d)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SizewiseError(f"{d / 'config.json'} is missing or damaged ({e.__class__.__name__}): compress again")
    tensors = read_tensors(d)
    model = build_skeleton(cfg)
    for name, m in manifest.get("modules", {}).items():
        try:
            cls = P.scheme_class(m["scheme"])
        except KeyError as e:
            raise SizewiseError(f"{d}: {e.args[0]} (is the module that registers it imported?)")
        prefix = name + "."
        # clone: safetensors may hand back views at arbitrary byte offsets, and the int8 kernel
        # crashes on unaligned weights (seen with _weight_int8pack_mm); clone gives 64-byte-aligned storage
        parts = {k[len(prefix):]: tensors.pop(k).clone() for k in [k for k in tensors if k.startswith(prefix)]
                 if "." not in k[len(prefix):]}
        bias = parts.pop("bias", None)
        set_module(model, name, cls.from_packed(parts, m["meta"], bias))
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise SizewiseError(f"{d}: tensors the model does not have: {', '.join(result.unexpected_keys[:3])}")
    if getattr(model.config, "tie_word_embeddings", False) and not any(
            m.get("meta", {}).get("tied_to") for m in manifest.get("modules", {}).values()):
        model.tie_weights()
    retie(model)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise SizewiseError(f"{d}: the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}: compress again")
    from sizewise.compression.precision import restore_stream
    restore_stream(model)  # an fp32 stream around bf16-stored embedding/lm_head (precision.py)
    model.eval()
    tokenizer = None
    if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(d))
    return model, tokenizer, manifest


def disk_bytes(d: str | Path) -> int:
    d = Path(d)
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))
