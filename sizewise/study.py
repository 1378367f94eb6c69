"""`sizewise study`: run a recipe grid on one model and measure what each recipe costs and buys.

For every recipe, in one process so ratios are fair: compress a copy of the parent, save it in
the sizewise format (size on disk is the real file size), load it back (load time; what a user
would run), score it against the parent (perplexity, KLD, top-1 on the same tokens), and time
prefill and decode. Writes study.json (everything), study.md (the table, beside the commonly
quoted claims) and PNG plots with the Pareto front marked.
"""
from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sizewise.errors import SizewiseError

DEFAULT_RECIPES = ["fp32", "bf16", "fp16", "torch-dynamic", "int8-wo", "int8-dyn", "int8-static",
                   "int4-g64", "int4-g128", "int4-gptq-g64", "int4-gptq-g128", "int4-g32-s6"]
QUICK_RECIPES = ["fp32", "bf16", "int8-wo", "int8-dyn", "int4-g64"]

# The table everyone quotes (no source, no model, no machine), shown beside the measured one.
CLAIMED = {
    "fp32": {"compression": "1x", "speed": "1x", "quality_loss": "baseline"},
    "fp16": {"compression": "2x", "speed": "1.2x", "quality_loss": "<0.5 %"},
    "int8": {"compression": "4x", "speed": "2.5x", "quality_loss": "1-2 %"},
    "int4": {"compression": "8x", "speed": "4x", "quality_loss": "3-5 %"},
}

# recipe kind / name -> the storage format `sizewise.size.formats` computes for it
FORMAT_OF = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8-wo": "int8", "int8-gptq": "int8", "int8-dyn": "int8",
             "int8-dyn-nosq": "int8",
             "int8-static": "int8"}


@dataclass
class StudySettings:
    eval_tokens: int = 8192
    window: int = 512
    prefill_tokens: int = 512
    decode_steps: int = 32
    decode_prompt: int = 64
    batches: tuple[int, ...] = (1, 8)
    runs: int = 4  # at least this many interleaved rounds (variant and parent in turns) after a warm-up
    max_rounds: int = 10  # more rounds only while a speed ratio's 95 % interval is wider than ±4 %
    compile: bool = False  # torch.compile the decode step (compile time is reported per variant)


# 8 decode steps (was 16) pays for timing the parent beside every variant: same study time.
QUICK_SETTINGS = StudySettings(eval_tokens=4096, decode_steps=8, max_rounds=6)
REFERENCE = "fp32"  # the row every ratio is against; its weights are the parent's


def _paired_speed(parent, name: str, model, tokens, s: StudySettings, phase: "ProgressHook") -> dict:
    """The variant timed in turns with the fp32 parent (registry/timing.py): its tok/s plus, per
    metric, the paired speedup over the parent with a 95 % interval, the machine load during
    the run and the verdict (ok / same / noisy / busy) that decides what the table may print."""
    from sizewise.evaluate import speed

    res = speed.interleaved_speed({"parent": parent, name: model}, tokens, s.batches, s.prefill_tokens,
                                  s.decode_steps, s.decode_prompt, min_rounds=s.runs,
                                  max_rounds=max(s.runs, s.max_rounds), compile=s.compile,
                                  on_phase=lambda p: phase(p, 0, 1))
    out = dict(res["models"][name])
    out["peak_rss_bytes"] = speed.peak_rss_bytes()
    out["interleaved"] = {"against": "fp32 parent (same process, alternating rounds)", "rounds": res["rounds"],
                          "ratios": {m: v[name] for m, v in res["ratios"].items()},
                          "verdicts": {m: v[name] for m, v in res["verdicts"].items()},
                          "load": res["load"], "load_text": res["load_text"], "parent": res["models"]["parent"]}
    return out


def _pool_reference_speed(rows: list[dict], parent, tokens, s: StudySettings) -> None:
    """Give the fp32 row the parent's speed: the median of every parent run timed beside the
    other variants (or, when fp32 is the only row, a run of its own)."""
    import statistics

    from sizewise.evaluate import speed

    ref = next((r for r in rows if r["recipe"] == REFERENCE), None)
    if ref is None or ref.get("speed") is not None:
        return
    others = [r["speed"]["interleaved"]["parent"] for r in rows if r.get("speed") and "interleaved" in r["speed"]]
    if not others:
        res = speed.interleaved_speed({REFERENCE: parent}, tokens, s.batches, s.prefill_tokens, s.decode_steps,
                                      s.decode_prompt, min_rounds=s.runs, max_rounds=s.runs, compile=s.compile)
        ref["speed"] = {**res["models"][REFERENCE], "peak_rss_bytes": ref["peak_rss_bytes"],
                        "pooled": {"load": res["load"], "load_text": res["load_text"]}}
        return
    pooled = {m: [t for o in others for t in o["timings"][m]["runs_s"]] for m in others[0]["timings"]}
    med = {m: statistics.median(v) for m, v in pooled.items()}
    base = others[0]
    ref["speed"] = {
        **{k: base[k] for k in ("prefill_tokens", "decode_steps", "decode_prompt", "warmup", "decoder")},
        "prefill_tok_s": base["prefill_tokens"] / med["prefill"] if "prefill" in med else None,
        "decode_tok_s": {b: float(b) * base["decode_steps"] / med[f"decode_b{b}"] for b in base["decode_tok_s"]},
        "runs": len(pooled.get("prefill", [])),
        "timings": {m: {"median_s": med[m], "runs_s": v, "warmup": base["warmup"]} for m, v in pooled.items()},
        "peak_rss_bytes": ref["peak_rss_bytes"],
        "pooled": {"from": [r["recipe"] for r in rows if r.get("speed") and "interleaved" in r["speed"]],
                   "note": "the parent's runs timed beside each variant"}}


def parse_recipes(spec: str | None, quick: bool = False) -> list[str]:
    """'a,b,c' -> names, checked against the registry; None -> the default (or quick) grid."""
    from sizewise.compression.recipes import RECIPES

    if not spec:
        return list(QUICK_RECIPES if quick else DEFAULT_RECIPES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in RECIPES]
    if bad or not names:
        raise SizewiseError(f"unknown recipe(s) {', '.join(bad) or repr(spec)}: choose from {', '.join(RECIPES)}")
    if "fp32" not in names:
        names.insert(0, "fp32")  # every ratio is against fp32 measured in the same run
    return list(dict.fromkeys(names))


def activation_dtype(config) -> "object":
    """Which dtype a recipe's activations run in: the weight-only int kernels are fast only with
    bf16 activations; torch's dynamic quantization needs fp32; float recipes run in their dtype."""
    import torch

    from sizewise.compression.apply import DTYPES
    from sizewise.compression.precision import STREAMS

    kind = getattr(config, "kind", "")
    if getattr(config, "stream", None) in STREAMS:
        return STREAMS[config.stream]
    if kind == "dtype":
        return DTYPES[config.dtype]
    if kind == "torch-dynamic":
        return torch.float32
    return torch.bfloat16


def kernels_of(model) -> dict[str, int]:
    """Which kernel runs each packed Linear ({kernel: count}); plain Linears are counted by dtype."""
    import torch

    from sizewise.compression.packed import is_packed

    out: dict[str, int] = {}
    for m in model.modules():
        if is_packed(m):
            k = str(m.kernel)
        elif getattr(m, "keeps_storage_dtype", False) and isinstance(m, torch.nn.Linear):
            k = f"aten.linear({str(m.weight.dtype).replace('torch.', '')}) + fp32 top-{m.k} logits"
        elif type(m).__module__.startswith("torch.ao") and "Linear" in type(m).__name__:
            k = "quantized::linear_dynamic (fbgemm, per-tensor act)"
        elif isinstance(m, torch.nn.Linear):
            k = f"aten.linear({str(m.weight.dtype).replace('torch.', '')})"
        else:
            continue
        out[k] = out.get(k, 0) + 1
    return out


def resident_bytes(model) -> int:
    """Bytes of the model's parameters and buffers in memory (tied tensors once): what the variant
    itself occupies, apart from the study process (which also holds the fp32 parent)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if t.numel() and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    for m in model.modules():  # torch.ao dynamic Linears keep packed weights outside parameters()
        pp = getattr(m, "_packed_params", None)
        if pp is not None and hasattr(pp, "_weight_bias"):
            w, b = pp._weight_bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
    return total


def source_grid(path: Path) -> dict | None:
    """The quantization grid the parent's Linear weights were stored on (GGUF sources only)."""
    if path.suffix != ".gguf":
        return None
    from sizewise.io.gguf_meta import gguf_tensors

    types: dict[str, int] = {}
    for t in gguf_tensors(path):
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            types[t.ggml_type] = types.get(t.ggml_type, 0) + 1
    if not types:
        return None
    main = max(types, key=types.get)
    grids = {"Q4_1": {"bits": 4, "group": 32, "asym": True}, "Q4_0": {"bits": 4, "group": 32, "asym": False},
             "Q8_0": {"bits": 8, "group": 32, "asym": False}}
    return {"ggml_type": main, "linear_tensor_types": types, **grids.get(main, {})}


def matches_source_grid(config, grid: dict | None) -> bool:
    """An int4 asymmetric recipe on the parent's own group grid (same group size as the GGUF source)."""
    if not grid or grid.get("bits") != 4 or not grid.get("asym"):
        return False
    return getattr(config, "kind", "") == "int4" and getattr(config, "group_size", None) == grid.get("group")


def expected_bytes(model, recipe: str, config, fallbacks: dict | None = None) -> int | None:
    """What `sizewise.size.formats` says this recipe's checkpoint should take (None when no format
    applies). Layers whose input dim forced a smaller int4 group (`fallbacks`, from the compression
    record) are counted in the group size they really use: same format, same tensor policy."""
    from sizewise.arch.families import inventory_from_config, match_tensor
    from sizewise.size.formats import size_in_format, tensor_bytes

    fmt = FORMAT_OF.get(recipe)
    int4 = "int4-ct-g" if getattr(config, "zero", "") == "int" else "int4-g"
    if fmt is None and getattr(config, "kind", "") == "int4":
        s6 = getattr(config, "scale_bits", 16) == 6  # formats.py prices int4-g32-s6 only; others: None below
        fmt = f"int4-g{config.group_size}-s6" if s6 else f"{int4}{config.group_size}"
    if fmt is None:
        return None
    try:
        inv = inventory_from_config(model.config.to_dict())
        int8_table = getattr(config, "embed", "bf16") == "int8"  # token table as int8 rows (token_table.py)
        if not fallbacks and not int8_table:
            return size_in_format(inv, fmt).bytes
        used = {}
        for name, fb in (fallbacks or {}).items():
            spec = match_tensor(inv, name + ".weight")
            if spec is not None:
                used[spec.name] = f"{int4}{fb['used']}"
        return sum(tensor_bytes(spec, "int8", inv.arch, keep_kinds=()) if int8_table and spec.kind in ("embedding", "lm_head")
                   else tensor_bytes(spec, used.get(spec.name, fmt), inv.arch) for spec in inv.tensors)
    except (SizewiseError, KeyError, ValueError):
        return None


# --- the run ---------------------------------------------------------------------------------

ProgressHook = Callable[[str, int, int], None]  # (phase, done, total)


def variant_model(parent, config, calib):
    """A compressed copy of the parent as the study measures and saves it -> (model, activation dtype).
    The file it saves is the one `sizewise compress` and `sizewise.compress` + `save` write
    (tests/compression/test_same_file.py)."""
    from sizewise.compression.apply import compress
    from sizewise.compression.precision import set_activation_dtype

    model = copy.deepcopy(parent)
    compress(model, config, calib_tokens=calib)
    act = activation_dtype(config)
    set_activation_dtype(model, act)
    return model, act


def _variant(parent, name: str, config, calib, tokenizer, parent_path: Path, tmp: Path, keep_dir: Path | None,
             ref, tokens, s: StudySettings, phase: ProgressHook) -> dict:
    import torch

    from sizewise.compression.precision import set_activation_dtype
    from sizewise.evaluate import metrics, speed

    speed.reset_peak_rss()
    row: dict = {"recipe": name, "config": config.to_dict(), "notes": []}
    phase("compress", 0, 1)
    t0 = time.perf_counter()
    model, act = variant_model(parent, config, calib)
    row["compress_s"] = time.perf_counter() - t0
    row["activation_dtype"] = str(act).replace("torch.", "")
    rec = getattr(model, "sizewise_compression", None)
    if rec is not None and getattr(rec, "fallbacks", None):
        row["notes"].append(f"{len(rec.fallbacks)} layer(s) used a fallback group size")
    if rec is not None and getattr(rec, "kept", None):
        row["notes"].append(f"{len(rec.kept)} targeted layer(s) kept in float: {sorted(set(rec.kept.values()))[0]}")

    # save + reload: size on disk is the file, load time is what a user pays, and the reloaded
    # model is the one measured (proves the checkpoint round-trips).
    row["bytes"], row["load_s"] = None, None
    phase("save/load", 0, 1)
    try:
        from sizewise.compression.checkpoint import load_compressed, save_compressed
    except ImportError:
        load_compressed = save_compressed = None
        row["notes"].append("checkpoint module not available: size/load time not measured")
    if save_compressed is not None:
        out = (keep_dir or tmp) / name
        try:
            save_compressed(model, tokenizer, out, None, str(parent_path), force=True)
            row["bytes"] = speed.dir_bytes(out / "model.safetensors") if (out / "model.safetensors").exists() \
                else sum(speed.dir_bytes(p) for p in out.glob("*.safetensors"))
            row["bytes_on_disk"] = row["bytes"]  # docs/vocabulary.md; `bytes` stays for one release
            row["dir_bytes"] = speed.dir_bytes(out)
            del model
            (model, _tok, manifest), row["load_s"] = speed.timed_load(lambda: load_compressed(out))
            from sizewise.study_peers import sizewise_decoder_bits
            row["decoder_bits_per_weight"] = sizewise_decoder_bits(manifest)
            set_activation_dtype(model, act)
        except (SizewiseError, NotImplementedError, ValueError) as e:
            row["notes"].append(f"not saveable in the sizewise format ({str(e).splitlines()[0]}): size/load not measured")
            if "model" not in locals() or model is None:
                model, act = variant_model(parent, config, calib)
        finally:
            if keep_dir is None:
                shutil.rmtree(out, ignore_errors=True)
    row["expected_bytes"] = expected_bytes(parent, name, config, getattr(rec, "fallbacks", None))
    row["kernels"] = kernels_of(model)
    row["resident_bytes"] = resident_bytes(model)
    model.eval()

    phase("quality", 0, len(ref.windows))
    q = metrics.compare(model, ref, progress=lambda d, t: phase("quality", d, t))
    row["quality"] = q.to_dict()
    phase("speed", 0, 1)
    speed.reset_peak_rss()
    if name == REFERENCE:
        # The fp32 row is the parent's own weights: its speed is the parent's, pooled from every
        # other row's interleaved run (`_pool_reference_speed`), which saves a self-comparison.
        row["speed"] = None
    else:
        row["speed"] = _paired_speed(parent, name, model, tokens, s, phase)
    row["peak_rss_bytes"] = speed.peak_rss_bytes()
    del model
    torch.set_default_dtype(torch.float32)
    return row


def run_study(model_spec: str, recipes: list[str] | None = None, quick: bool = False,
              settings: StudySettings | None = None, text_files: list[str] | None = None,
              keep_dir: Path | None = None, progress: bool = True, console=None,
              peer_types: tuple[str, ...] | None = None) -> dict:
    """Run the grid; returns the study dict (what study.json holds). See module doc."""
    import torch

    from sizewise.compression.recipes import RECIPES
    from sizewise.evaluate import data, machine, metrics, speed
    from sizewise.io.model_load import load_model

    recipes = recipes or parse_recipes(None, quick)
    s = settings or (QUICK_SETTINGS if quick else StudySettings())
    threads = machine.set_threads()
    t_start = time.perf_counter()
    text = data.corpus_text(text_files) if text_files else None
    need = max(s.eval_tokens, s.prefill_tokens, max(s.batches) * s.decode_prompt)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    console = console or Console(stderr=True)
    prog = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not progress, transient=False)
    with prog:
        top = prog.add_task("study: loading parent", total=len(recipes) + 1)
        sub = prog.add_task("", total=1)

        def phase(name: str, done: int, total: int, recipe: str = "parent") -> None:
            prog.update(sub, description=f"  {recipe}: {name}", completed=done, total=max(total, 1))

        (lm, load_s) = speed.timed_load(lambda: load_model(model_spec))
        parent, tok = lm.model, lm.tokenizer
        grid = source_grid(lm.source)
        tokens = data.eval_tokens(tok, need, text)
        prog.update(top, description="study: parent reference", advance=1)
        ref = metrics.build_reference(parent, tokens[:s.eval_tokens], s.window,
                                      progress=lambda d, t: phase("reference", d, t))
        t_parent = time.perf_counter() - t_start  # load + reference: shared by every row
        rows = []
        from sizewise.io.atomic import scratch_dir
        tmp = scratch_dir("sizewise-study")  # named by this process: a killed study's is removed next time
        try:
            for name in recipes:
                cfg = RECIPES[name]
                t_row = time.perf_counter()
                prog.update(top, description=f"study: {name}")
                calib = None
                if cfg.needs_calibration:
                    calib = data.calib_tokens(tok, getattr(cfg, "calib_samples", 8), getattr(cfg, "calib_seq_len", 256), text)
                row = _variant(parent, name, cfg, calib, tok, lm.source, tmp, keep_dir, ref, tokens, s,
                               lambda p, d, t, _n=name: phase(p, d, t, _n))
                row["matches_source_grid"] = matches_source_grid(cfg, grid)
                row["study_seconds"] = time.perf_counter() - t_row  # compress + save + reload + measure
                rows.append(row)
                prog.update(top, advance=1)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _pool_reference_speed(rows, parent, tokens, s)
        peer_rows, peer_notes = [], []
        if peer_types:  # llama.cpp's quantizer on the same parent, scored on the same windows (study_peers.py)
            from sizewise.study_peers import llamacpp_rows
            prog.update(top, description="study: llama.cpp peers")
            peer_rows, peer_notes = llamacpp_rows(lm.source, lm.kind, ref, tokens, threads, peer_types,
                                                  s.prefill_tokens, s.decode_steps, s.decode_prompt,
                                                  phase=lambda p, d, t: phase(p, d, t, "peers"))
    _add_ratios(rows)
    extra = {"peers": peer_rows, "peer_notes": peer_notes} if peer_types else {}
    return {**extra,
        "model": model_spec, "source": str(lm.source), "source_kind": lm.kind,
        "parent": {"description": _parent_description(lm, grid), "params": {"total": sum(p.numel() for p in parent.parameters())},
                   "load_s": load_s, "quality": ref.quality.to_dict(), "source_grid": grid},
        "settings": {**s.__dict__, "batches": list(s.batches), "corpus": "files: " + ", ".join(text_files)
                     if text_files else "pydoc_data.topics.topics (sorted keys, blank-line joined)", "quick": quick},
        "recipes": rows, "claimed": CLAIMED, "wall_s": time.perf_counter() - t_start,
        "parent_seconds": t_parent,
        "machine": machine.machine_info(), "command": machine.command_line(),
    }


def _parent_description(lm, grid) -> str:
    if lm.kind == "gguf":
        g = f" (Linear weights stored as {grid['ggml_type']})" if grid else ""
        return f"{lm.source.name}{g}, dequantized to fp32 by transformers: this fp32 model is the parent"
    return f"{lm.source} loaded in fp32: this is the parent"


def _add_ratios(rows: list[dict]) -> None:
    """Ratios to the fp32 row of the same run: compression, prefill and decode speedup, Δppl %."""
    base = next((r for r in rows if r["recipe"] == "fp32"), None)
    if base is None:
        return
    bp = base["quality"]["ppl"]
    for r in rows:
        sp, bs = r["speed"], base["speed"]
        il = sp.get("interleaved")
        if il:  # paired against the parent in the same rounds: the estimate, its interval and verdict
            est = {m: v["estimate"] for m, v in il["ratios"].items()}
            prefill = est.get("prefill")
            decode = {b: est[f"decode_b{b}"] for b in sp["decode_tok_s"]}
            verdicts = {"prefill": il["verdicts"].get("prefill"),
                        **{b: il["verdicts"][f"decode_b{b}"] for b in sp["decode_tok_s"]}}
        else:  # the reference itself (or an old study without interleaving)
            prefill = sp["prefill_tok_s"] / bs["prefill_tok_s"]
            decode = {b: sp["decode_tok_s"][b] / bs["decode_tok_s"][b] for b in sp["decode_tok_s"]}
            ref = {"status": "reference", "reasons": [], "cell": "1.00x (ref)"}
            verdicts = {"prefill": ref, **{b: ref for b in sp["decode_tok_s"]}} if r is base else {}
        r["ratios"] = {
            "compression": (base["bytes"] / r["bytes"]) if base.get("bytes") and r.get("bytes") else None,
            "prefill_speedup": prefill,
            "decode_speedup": decode,
            "speed_verdicts": verdicts,
            "delta_ppl_pct": 100.0 * (r["quality"]["ppl"] - bp) / bp,
        }
        if r.get("bytes") and r.get("expected_bytes"):
            r["size_vs_formula_pct"] = 100.0 * (r["bytes"] - r["expected_bytes"]) / r["expected_bytes"]


# --- outputs ---------------------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when both coordinates are to be minimized."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


def _fmt(v, spec: str, none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def speed_cell(row: dict, key: str) -> str:
    """A speedup as the table may print it: the ratio only when its verdict is "ok" or it is the
    reference; otherwise the interval and a flag (never a bare number the noise could flip).
    key: "prefill" or a batch ("1", "8"). Studies written before interleaving print the ratio."""
    ra = row.get("ratios", {})
    v = (ra.get("speed_verdicts") or {}).get(key)
    if v:
        return v["cell"]
    val = ra.get("prefill_speedup") if key == "prefill" else (ra.get("decode_speedup") or {}).get(key)
    return f"{_fmt(val, '.2f')}x"


def timing_notes(study: dict) -> list[str]:
    """One line on how speed was measured, one per row whose timing is not trustworthy, and the
    machine's load; shared by study.md and report.html."""
    st = study["settings"]
    out = [f"Speed: each variant timed in turns with the fp32 parent in this process (AB, BA, ... rounds, one "
           f"warm-up round discarded, {st['runs']}-{st.get('max_rounds', st['runs'])} rounds until the 95 % interval "
           "of the paired ratio is within ±4 %). A speedup is printed only when its interval is within ±10 %, "
           "excludes 1, and other processes used at most 10 % of the CPUs; otherwise the cell shows the interval "
           "and why (busy! = others used the CPUs, noisy! = wide interval, ≈1 = no measurable difference)."]
    for r in study["recipes"]:
        il = (r.get("speed") or {}).get("interleaved")
        if not il:
            continue
        bad = {m: v for m, v in il["verdicts"].items() if v["status"] in ("busy", "noisy")}
        if bad:
            why = sorted({reason for v in bad.values() for reason in v["reasons"]})
            out.append(f"⚠ {r['recipe']}: timing not trustworthy ({', '.join(sorted(bad))}): {'; '.join(why)}.")
        else:
            out.append(f"{r['recipe']}: {il['rounds']} rounds; {il['load_text']}.")
    return out


def claims_rows(study: dict) -> list[dict]:
    """The commonly quoted table (CLAIMED) beside this run's measurements, one dict per precision."""
    pick = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-wo", "int4": "int4-g64"}
    rows = study["recipes"]
    by = {r["recipe"]: r for r in rows}
    out = []
    for prec, claim in study.get("claimed", CLAIMED).items():
        r = by.get(pick.get(prec, prec)) or next((x for x in rows if x["recipe"].startswith(prec)), None)
        if r is None:
            out.append({"precision": prec, "recipe": None, **{f"claimed_{k}": v for k, v in claim.items()},
                        "measured_compression": "-", "measured_speed": "-", "measured_quality_loss": "-"})
            continue
        ra = r.get("ratios", {})
        out.append({"precision": prec, "recipe": r["recipe"], **{f"claimed_{k}": v for k, v in claim.items()},
                    "measured_compression": f"{_fmt(ra.get('compression'), '.2f')}x",
                    "measured_speed": speed_cell(r, "1"),
                    "measured_quality_loss": f"{_fmt(ra.get('delta_ppl_pct'), '+.2f')} %"})
    return out


def markdown(study: dict) -> str:
    rows = study["recipes"]
    p = study["parent"]
    st = study["settings"]
    m = study["machine"]
    front = {rows[i]["recipe"] for i in pareto_front(
        [(r.get("bytes") or math.inf, r["ratios"]["delta_ppl_pct"]) for r in rows])} if rows and "ratios" in rows[0] else set()
    lines = [f"# sizewise study: {study['model']}", "",
             f"Parent: {p['description']}. {p['params']['total']:,} parameters; perplexity {p['quality']['ppl']:.3f} over "
             f"{p['quality']['n_predicted']:,} predicted tokens ({st['eval_tokens']:,} tokens, windows of {st['window']}, "
             f"corpus {st['corpus']}).", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads). "
             f"Speed: prefill {st['prefill_tokens']} tokens; greedy decode {st['decode_steps']} steps after a "
             f"{st['decode_prompt']}-token prompt, static KV cache; tok/s from the median round. "
             "Ratios are against the fp32 parent, paired round by round in this same run.", "",
             *[ln for n in timing_notes(study) for ln in (n, "")],
             "| recipe | act dtype | size | compression | prefill tok/s | prefill x | "
             + " | ".join(f"decode b{b} tok/s | decode b{b} x" for b in st["batches"])
             + " | ppl | Δppl % | KLD | top-1 % | weights in RAM | peak RSS | kernel |",
             "|---|---|---:|---:|---:|---:|" + "---:|---:|" * len(st["batches"]) + "---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        q, sp, ra = r["quality"], r["speed"], r.get("ratios", {})
        name = r["recipe"] + (" (source grid)" if r.get("matches_source_grid") else "") + (" ★" if r["recipe"] in front else "")
        kern = "; ".join(sorted(r["kernels"], key=r["kernels"].get, reverse=True)[:1])
        dec = " | ".join(f"{sp['decode_tok_s'][str(b)]:.1f} | {speed_cell(r, str(b))}" for b in st["batches"])
        lines.append(
            f"| {name} | {r['activation_dtype']} | {_fmt(r.get('bytes') and r['bytes'] / 1e6, '.1f')} MB | "
            f"{_fmt(ra.get('compression'), '.2f')}x | {sp['prefill_tok_s']:.0f} | {speed_cell(r, 'prefill')} | "
            f"{dec} | {q['ppl']:.3f} | {_fmt(ra.get('delta_ppl_pct'), '+.2f')} | {_fmt(q['kld'], '.4f')} | "
            f"{_fmt(q['top1'] is not None and 100 * q['top1'], '.1f')} | {_fmt(r.get('resident_bytes') and r['resident_bytes'] / 1e6, '.0f')} MB | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} MiB | {kern} |")
    lines += ["", "Peak RSS is the study process's high-water mark while the variant was built and measured; the "
              "fp32 parent and its reference stay resident throughout, so compare \"weights in RAM\" for the "
              "variant alone. `sizewise eval` reports a model's own peak RSS.", "",
              "★ = on the Pareto front of size vs Δppl. \"(source grid)\" = the recipe's int4 grid is the one the "
              "parent's weights were already stored on (GGUF Q4_1, group 32, asymmetric). With a float zero "
              "(the default) the fitted grid re-finds the stored integers, so what such a row loses is the "
              "bf16 activations and bf16 scales, not the rounding; with an integer zero point (int4-ct-*) it "
              "cannot place Q4_1's float minimum. Either way it says nothing about int4 on a bf16-trained "
              "model.", "",
              "## Claimed vs measured", "",
              "The commonly quoted table (no model, machine or method given) beside this run:", "",
              "| precision | claimed compression | measured | claimed speed | measured decode b1 | claimed quality loss | measured Δppl % |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for c in claims_rows(study):
        label = f"{c['precision']} ({c['recipe']})" if c["recipe"] else f"{c['precision']} (not in this run)"
        lines.append(f"| {label} | {c['claimed_compression']} | {c['measured_compression']} | {c['claimed_speed']} | "
                     f"{c['measured_speed']} | {c['claimed_quality_loss']} | {c['measured_quality_loss']} |")
    if study.get("peers") is not None:
        lines += ["", *peer_markdown(study)]
    notes = [f"- {r['recipe']}: {n}" for r in rows for n in r.get("notes", [])]
    size_chk = [f"- {r['recipe']}: {r['bytes']:,} B on disk vs {r['expected_bytes']:,} B from size_in_format "
                f"({r['size_vs_formula_pct']:+.2f} %)" for r in rows if r.get("size_vs_formula_pct") is not None]
    if size_chk:
        lines += ["", "## Size on disk vs the formula", "", *size_chk]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", f"Command: `{study['command']}`; wall time {study['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def peer_markdown(study: dict) -> list[str]:
    """Quality at the bits actually stored: sizewise's rows and llama.cpp's quantizer on the same parent,
    bits per weight over the decoder Linears as each file stores them, KLD against the same fp32 parent
    on the same windows (study_peers.py)."""
    p = study["parent"]["quality"]["ppl"]
    out = ["## Quality at the bits stored: sizewise and llama.cpp's quantizer on the same parent", "",
           *[f"{n}" for n in study.get("peer_notes", [])], "",
           "| row | decoder bits/weight (as stored) | size | ppl | Δppl % | KLD | top-1 % | decode b1 tok/s | prefill tok/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    items = []
    for r in study["recipes"]:
        sp = r.get("speed") or {}
        items.append((r.get("decoder_bits_per_weight"), f"sizewise {r['recipe']}", r.get("bytes"), r["quality"],
                      (sp.get("decode_tok_s") or {}).get("1"), sp.get("prefill_tok_s")))
    for r in study.get("peers") or []:
        types = ", ".join(f"{t} {100 * f:.0f} %" for t, f in r["decoder_types"].items())
        items.append((r["decoder_bits_per_weight"], f"{r['peer']} ({types})", r["bytes_on_disk"], r["quality"],
                      r["speed"]["decode_b1_tok_s"], r["speed"]["prefill_tok_s"]))
    for bits, name, size, q, dec, pre in sorted(items, key=lambda x: (x[0] is None, x[0] or 0)):
        out.append(f"| {name} | {_fmt(bits, '.2f')} | {_fmt(size and size / 1e6, '.1f')} MB | {q['ppl']:.3f} | "
                   f"{100 * (q['ppl'] - p) / p:+.2f} | {_fmt(q['kld'], '.4f')} | "
                   f"{_fmt(q['top1'] is not None and 100 * q['top1'], '.1f')} | {_fmt(dec, '.1f')} | {_fmt(pre, '.0f')} |")
    out += ["", "Speeds in this table are each engine's own (sizewise's from the study's interleaved rounds, "
            "llama.cpp's median of 3 after a warm-up, same thread count), not paired ratios."]
    return out


def write_outputs(study: dict, out_dir: Path) -> list[Path]:
    """study.json, study.md, report.html (self-contained: tables, plots, lineage) and the PNG
    plots, each written atomically."""
    from sizewise.io.atomic import atomic_write_json, atomic_write_text
    from sizewise.report.html import render_study
    from sizewise.report.plots import study_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    # study.json last: each file is replaced whole, and a study.json newer than the others means they
    # are all from this run (a kill in between leaves the previous study.json with its own md/plots)
    paths = [atomic_write_text(out_dir / "study.md", markdown(study)),
             atomic_write_text(out_dir / "report.html", render_study(study)), *study_plots(study, out_dir)]
    return [atomic_write_json(out_dir / "study.json", study), *paths]


def default_out_dir(model_spec: str) -> Path:
    stem = Path(model_spec.rstrip("/")).name
    for suf in (".gguf", ".json"):
        stem = stem.removesuffix(suf)
    return Path(f"study-{stem or 'model'}")
