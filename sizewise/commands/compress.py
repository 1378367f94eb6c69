"""`sizewise compress MODEL --recipe NAME|FILE --out DIR`: quantize (optionally prune), save, summarize.

HF safetensors directories with a round-to-nearest recipe are compressed tensor by tensor
(streaming, bounded memory); everything else is loaded, compressed in memory and saved.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from sizewise.errors import SizewiseError

DEFAULT_SEQ_LEN = 256


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _calibration(tokenizer, cfg, calib_file: str | None, calib_tokens: int | None):
    """[n, seq] calibration tokens from after the first 16384 corpus tokens (eval uses the first 8192)."""
    from sizewise.evaluate.data import calib_tokens as _calib

    seq = getattr(cfg, "calib_seq_len", DEFAULT_SEQ_LEN)
    n = getattr(cfg, "calib_samples", 8)
    if calib_tokens is not None:
        if calib_tokens < seq:
            raise SizewiseError(f"--calib-tokens {calib_tokens} is shorter than one calibration sequence ({seq} tokens)")
        n = calib_tokens // seq
    if not calib_file:
        return _calib(tokenizer, n, seq), "pydoc_data.topics (sorted keys)"
    # a user's calibration file is already separate from the evaluation text: use it from its start
    import torch

    from sizewise.evaluate.data import corpus_text
    ids = tokenizer(corpus_text([calib_file]), add_special_tokens=False)["input_ids"]
    if len(ids) < n * seq:
        raise SizewiseError(f"calibration text {calib_file} has {len(ids)} tokens, the recipe needs {n * seq} "
                            f"({n} x {seq}): give a longer file or a smaller --calib-tokens")
    return torch.tensor(ids[:n * seq], dtype=torch.long).view(n, seq), calib_file


def compress_command(model: str, recipe: str | None, out: str, force: bool = False, calib_file: str | None = None,
                     calib_tokens: int | None = None, stream: bool | None = None, json_out: bool = False,
                     prune_opts: dict[str, Any] | None = None) -> dict:
    from sizewise.compression.checkpoint import check_out_path
    from sizewise.compression.recipes import get_recipe
    from sizewise.compression.streaming import streamable
    from sizewise.io.atomic import recover as recover_output
    from sizewise.io.bundled import resolve_path

    t0 = time.perf_counter()
    if recipe is None:
        if not (prune_opts or {}).get("prune"):
            from sizewise.compression.recipes import RECIPES
            raise SizewiseError(f"--recipe is required (one of {', '.join(RECIPES)}, or a .json/.yaml file) "
                                "unless --prune is given")
        recipe = "fp16"  # pruning alone: the kept values are stored as fp16
    cfg = get_recipe(recipe)
    src = resolve_path(model)
    if not src.exists():
        raise SizewiseError(f"model not found: {src} (give a .gguf file, an HF directory, or 'bundled')")
    check_out_path(out, src)
    recover_output(out)  # a killed earlier run's temps; its old --out put back if it was moved aside
    if Path(out).exists() and not force:
        raise SizewiseError(f"{out} already exists: choose another output path or pass --force to replace it")
    if calib_file and not Path(calib_file).is_file():
        raise SizewiseError(f"calibration file not found: {calib_file}")
    prune_opts = {k: v for k, v in (prune_opts or {}).items() if v is not None}
    if prune_opts and not prune_opts.get("prune"):
        raise SizewiseError("--sparsity/--schedule/--steps/--train-file need --prune magnitude|wanda|sparsegpt")
    if prune_opts:
        from sizewise.commands.prune import validate_prune_options
        validate_prune_options(prune_opts)  # bad pruning options fail before the model loads
    is_hf_dir = src.is_dir() and any(src.glob("*.safetensors"))
    if is_hf_dir and (src / "sizewise.json").exists():
        if stream:
            raise SizewiseError(f"{src} is a sizewise checkpoint (packed tensors): it is compressed in memory, drop --stream")
        stream = False  # its packed modules (.qweight, .values/.bitmask) are not plain HF tensors to stream
    if is_hf_dir:  # headers only: a truncated or corrupt shard is one clear line before any loading
        from sizewise.io.safetensors_scan import scan_safetensors
        scan_safetensors(src)
    use_stream = is_hf_dir and streamable(cfg) and not prune_opts if stream is None else stream
    if use_stream and not (is_hf_dir and streamable(cfg)):
        raise SizewiseError("--stream needs an HF safetensors directory and a recipe that streams "
                            "(fp16, bf16, int8-wo, int8-gptq, int8-dyn[-nosq], int4-gN, int4-gptq-gN, int4-imatrix-gN, int4-ct-gN)")
    if use_stream:
        calib = None
        if cfg.needs_calibration:  # GPTQ streams layer by layer; it still needs the tokenizer for calibration
            from transformers import AutoTokenizer
            try:
                tok = AutoTokenizer.from_pretrained(str(src))
            except Exception as e:  # noqa: BLE001 - transformers raises many types here
                raise SizewiseError(f"no usable tokenizer in {src} for calibration ({e.__class__.__name__})")
            calib, source = _calibration(tok, cfg, calib_file, calib_tokens)
        manifest = _streamed(src, out, cfg, force, calib)
    else:
        manifest = _in_memory(src, model, out, cfg, force, calib_file, calib_tokens, prune_opts)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 2)
    summary = _summary(manifest, out)
    if json_out:
        import json
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return summary


def _streamed(src: Path, out: str, cfg, force: bool, calib=None) -> dict:
    from sizewise.compression.streaming import compress_checkpoint_streaming

    with _progress() as prog:
        task = prog.add_task("quantize (streaming)", total=None)
        return compress_checkpoint_streaming(src, out, cfg, force=force, calib_tokens=calib,
                                             progress=lambda d, t: prog.update(task, completed=d, total=t))


def _in_memory(src: Path, spec: str, out: str, cfg, force: bool, calib_file, calib_tokens, prune_opts) -> dict:
    import torch

    from sizewise.compression.apply import compress
    from sizewise.compression.checkpoint import save_compressed
    from sizewise.io.model_load import load_model

    with _progress() as prog:
        task = prog.add_task("load model", total=None)
        # HF dirs load in their own dtype (no fp32 copy of a bf16 model); GGUF dequantizes to fp32
        lm = load_model(str(src), dtype=torch.float32 if src.suffix == ".gguf" else "auto")
        prog.update(task, completed=1, total=1)
    model, tok = lm.model, lm.tokenizer
    extra: dict[str, Any] = {}
    if prune_opts:
        from sizewise.commands.prune import apply_prune_options
        from sizewise.compression.recipes import recipe_name
        model = apply_prune_options(model, tok, {**prune_opts, "recipe": recipe_name(cfg)})
        extra["prune"] = getattr(model, "sizewise_prune", None)
    if lm.kind == "sizewise" and not prune_opts:
        extra["carried"] = repack_compressed_source(model, cfg)
    calib = None
    if cfg.needs_calibration:
        calib, source = _calibration(tok, cfg, calib_file, calib_tokens)
        extra["calibration_source"] = {"text": source, "tokens_from": "after the first 16384 tokens"
                                       if not calib_file else "start of --calib-file",
                                       "evaluation": "first 8192 tokens of the default corpus"}
    with _progress() as prog:
        task = prog.add_task(f"compress ({cfg.kind})", total=None)
        compress(model, cfg, calib_tokens=calib, progress=lambda d, t: prog.update(task, completed=d, total=t))
    with _progress() as prog:
        prog.add_task("save", total=None)
        return save_compressed(model, tok, out, None, src, force=force, extra=extra)


def repack_compressed_source(model, cfg) -> dict[str, str]:
    """A source that is itself a sizewise checkpoint (compress -> prune -> compress): its packed modules
    are not nn.Linear, so the recipe pass would skip them silently. Pruned modules stored with fp16
    values are re-packed with the value format the recipe implies (as `--prune ... --recipe R` would:
    int8 for int8-wo, int4 for int4-gN); anything else already packed is refused in one line, naming
    the parent to compress from instead. Returns name -> new scheme."""
    import torch

    from sizewise.commands.prune import value_format_for_recipe
    from sizewise.compression.apply import set_module
    from sizewise.compression.packed import is_packed
    from sizewise.compression.recipes import recipe_name
    from sizewise.compression.sparse import SparseLinear, int4_group_for

    packed = {n: m for n, m in model.named_modules() if is_packed(m) and hasattr(m, "in_features")}
    if not packed:
        return {}
    name = recipe_name(cfg)
    others = sorted({m.scheme for m in packed.values() if not (isinstance(m, SparseLinear) and m.values_format == "fp16")})
    try:
        vf, group = value_format_for_recipe(name)
    except SizewiseError:
        vf, group = None, 0
    if others or vf is None:
        what = ", ".join(others) if others else "pruned (sparse fp16)"
        raise SizewiseError(f"the source is already compressed ({what} modules) and recipe {name} cannot re-pack them: "
                            "compress its parent instead (for pruned models: `sizewise compress PARENT --prune ... --recipe R`)")
    if vf == "fp16":
        return {}  # kept as they are
    out = {}
    for n, m in packed.items():
        lin = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        lin.weight.data = m.dequantized_weight().float()
        if m.bias is not None:
            lin.bias.data = m.bias.detach().float()
        g = int4_group_for(m.in_features, group or 128) if vf == "int4" else (group or 128)
        new = SparseLinear.from_float(lin, m.mask, vf, m.n, m.m, g)
        set_module(model, n, new)
        out[n] = new.scheme
    return out


def _summary(manifest: dict, out: str) -> dict:
    from sizewise.compression.sizing import estimate_bytes

    from sizewise.io.safetensors_scan import scan_safetensors

    est = estimate_bytes(manifest)
    disk = manifest.get("bytes_on_disk", 0)
    data = scan_safetensors(out).data_bytes  # tensor bytes without safetensors' JSON headers
    schemes = Counter(m["scheme"] for m in manifest.get("modules", {}).values())
    kernels = Counter(m["kernel"] for m in manifest.get("modules", {}).values())
    kept = Counter(t["scheme"] for n, t in manifest.get("tensors", {}).items()
                   if t["scheme"] in ("fp32", "fp16", "bf16"))
    return {
        "out": str(out), "recipe": manifest.get("recipe_name") or manifest.get("recipe"),
        "streamed": bool(manifest.get("streamed")), "schemes": dict(schemes), "kernels": dict(kernels),
        "float_tensors": dict(kept), "bytes_on_disk": disk, "tensor_data_bytes": data,
        "estimate_bytes": est["estimate"], "estimate_layout_bytes": est["layout"], "unpriced_schemes": est["unpriced"],
        "disk_vs_layout_estimate": round(disk / est["layout"] - 1, 5) if est["layout"] else None,
        "data_vs_layout_estimate": round(data / est["layout"] - 1, 5) if est["layout"] else None,
        "disk_vs_estimate": round(disk / est["estimate"] - 1, 5) if est["estimate"] else None,
        "fallbacks": manifest.get("fallbacks", {}), "kept_float": manifest.get("kept_float", {}),
        "calibration": manifest.get("calibration"), "seconds": manifest.get("seconds_total"),
    }


def _compact_names(names) -> str:
    """'model.layers.{i}.mlp.up_proj (30 layers)' instead of 30 names."""
    import re
    pats = Counter(re.sub(r"\.layers\.\d+\.", ".layers.{i}.", n) for n in names)
    return ", ".join(f"{p} (x{k})" if k > 1 else p for p, k in sorted(pats.items()))


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"sizewise compress -> {s['out']}", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("recipe", str(s["recipe"]))
    t.add_row("path", "streaming (tensor by tensor)" if s["streamed"] else "in memory")
    for k, v in sorted(s["schemes"].items()):
        t.add_row(f"modules {k}", f"{v:,}")
    for k, v in sorted(s["kernels"].items()):
        t.add_row("kernel", f"{k} x{v}")
    for k, v in sorted(s["float_tensors"].items()):
        t.add_row(f"tensors kept {k}", f"{v:,}")
    gb = lambda b: f"{b:,} B = {b / 1e9:.3f} GB = {b / 2**30:.3f} GiB"  # noqa: E731
    t.add_row("on disk (safetensors files)", gb(s["bytes_on_disk"]))
    t.add_row("tensor data (no headers)", gb(s["tensor_data_bytes"]))
    if s["estimate_bytes"]:
        t.add_row("estimate (formats.py)", f"{gb(s['estimate_bytes'])} ({100 * s['disk_vs_estimate']:+.2f} % disk)")
    if s["estimate_bytes"] != s["estimate_layout_bytes"]:
        t.add_row("estimate, int4 zeros packed 0.5 B/group",
                  f"{gb(s['estimate_layout_bytes'])} ({100 * s['disk_vs_layout_estimate']:+.2f} % disk)")
    if s["unpriced_schemes"]:
        t.add_row("not priced by estimate", ", ".join(s["unpriced_schemes"]))
    if s["calibration"]:
        t.add_row("calibration", ", ".join(f"{k}={v}" for k, v in s["calibration"].items()))
    t.add_row("time", f"{s['seconds']:.1f} s")
    c.print(t)
    if s["fallbacks"]:
        fb = Counter((v["requested"], v["used"]) for v in s["fallbacks"].values())
        for (req, used), n in fb.items():
            c.print(f"[yellow]group size fallback[/]: {n} layer(s) use g{used} instead of g{req} (input dim not a "
                    f"multiple of {req}); listed in sizewise.json 'fallbacks':")
        c.print("  " + _compact_names(s["fallbacks"]))
    if s["kept_float"]:
        c.print("[yellow]kept in float[/]: " + "; ".join(f"{k} ({v})" for k, v in s["kept_float"].items()))
