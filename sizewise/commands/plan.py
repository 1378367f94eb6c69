"""`sizewise plan` and `sizewise hardware`: wiring from MODEL + hardware to the layout search, and
the tables / JSON / launch commands they print. The arithmetic lives in sizewise/plan/."""
from __future__ import annotations

import json
from pathlib import Path

from sizewise.arch.families import inventory_from_config
from sizewise.arch.resolve import load_config
from sizewise.errors import SizewiseError
from sizewise.plan import launch
from sizewise.plan.hardware import Accelerator, catalog, get_hardware
from sizewise.plan.parallel import (ServeResult, TrainResult, check_cluster, plan_serving, plan_training)
from sizewise.units import GB, GiB

_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}


def native_format(cfg: dict) -> str:
    """The format the checkpoint stores: its quantization_config (fp8 blocks; compressed-tensors int4
    groups or int8 channels, as `sizewise export --to vllm` writes them) or its torch dtype."""
    q = cfg.get("quantization_config")
    if isinstance(q, dict) and str(q.get("quant_method", "")).lower() == "fp8":
        return "fp8"
    if isinstance(q, dict) and str(q.get("quant_method", "")).lower() == "compressed-tensors":
        ct = compressed_tensors_format(q)
        if ct:
            return ct
    dt = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").lower()
    return _TORCH_DTYPES.get(dt, "bf16")


def compressed_tensors_format(q: dict) -> str | None:
    """A compressed-tensors quantization_config -> the sizewise storage format that sizes it: int4 groups
    -> int4-ct-gG, int8 channels (W8A16 or W8A8) -> int8; None when the groups differ or are another kind."""
    found = set()
    for g in (q.get("config_groups") or {}).values():
        w = g.get("weights") or {}
        if w.get("type", "int") != "int":
            return None
        if w.get("num_bits") == 4 and w.get("strategy") == "group" and w.get("group_size") in (32, 64, 128):
            found.add(f"int4-ct-g{w['group_size']}")
        elif w.get("num_bits") == 8 and w.get("strategy") == "channel":
            found.add("int8")
        else:
            return None
    return found.pop() if len(found) == 1 else None


def model_id_for(model: str, name: str) -> str:
    """What the engines should load: a local path as given (absolute), else the HF repo id."""
    if model == "bundled":
        from sizewise.io.bundled import bundled_gguf_path
        return str(bundled_gguf_path())
    p = Path(model).expanduser()
    if p.exists():
        return str((p.parent if p.name == "config.json" else p).resolve())
    return name


def _launch(res: ServeResult, model_id: str, native: str | None) -> dict:
    best = res.best
    lay, req = best.layout, res.request
    kw = dict(kv_dtype=req.kv_dtype, native_fmt=native)
    nodes = best.nodes
    return {
        "layout": {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "ep": lay.ep, "devices": lay.devices, "nodes": nodes},
        "vllm": launch.vllm_commands(model_id, lay, req.weights, req.context, nodes=nodes,
                                     gpus_per_node=res.gpus_per_node,
                                     gpu_memory_utilization=req.gpu_memory_utilization, **kw),
        "vllm_multinode": launch.vllm_multinode_hint(nodes, lay, res.gpus_per_node),
        "sglang": launch.sglang_commands(model_id, lay, req.weights, req.context, nodes=nodes,
                                         mem_fraction=req.gpu_memory_utilization, **kw),
        "notes": launch.serve_notes(lay, req.weights, req.kv_dtype, native, model_id),
    }


def serve_dict(res: ServeResult, top: int, model_id: str, native: str | None) -> dict:
    fits = res.any_fits
    return {
        "mode": "serve",
        "model": res.model,
        "model_id": model_id,
        "hardware": res.hardware.to_dict(),
        "cluster": {"gpus_per_node": res.gpus_per_node, "nodes": res.nodes,
                    "devices": res.gpus_per_node * res.nodes},
        "request": {"weights": res.request.weights, "native_weights": native, "context": res.request.context,
                    "batch": res.request.batch, "kv_dtype": res.request.kv_dtype,
                    "gpu_memory_utilization": res.request.gpu_memory_utilization},
        "units": {"GB": GB, "GiB": GiB},
        "fits": fits,
        "layouts_considered": len(res.plans),
        "plans": [p.to_dict() for p in res.plans[:top]],
        "launch": _launch(res, model_id, native) if fits else None,
        "remedy": res.remedy,
        "assumptions": res.assumptions,
    }


def train_dict(res: TrainResult, top: int) -> dict:
    best = res.best
    out = {
        "mode": "train",
        "model": res.model,
        "hardware": res.hardware.to_dict(),
        "cluster": {"gpus_per_node": res.gpus_per_node, "nodes": res.nodes,
                    "devices": res.gpus_per_node * res.nodes},
        "request": {"zero": res.zero, "seq": res.seq, "micro_batch": res.micro_batch, "optimizer": "adamw"},
        "units": {"GB": GB, "GiB": GiB},
        "fits": bool(best and best.fits),
        "plans": [p.to_dict() for p in res.plans[:top]],
        "deepspeed": None,
        "remedy": res.remedy,
        "assumptions": res.assumptions,
    }
    if best is not None and best.fits:
        cfg = launch.deepspeed_config(res.zero, res.micro_batch, best.grad_accum, best.layout.dp)
        out["deepspeed"] = {"config": cfg,
                            "command": launch.deepspeed_command(res.gpus_per_node, res.nodes),
                            "notes": best.notes}
    return out


def _gb(n: float) -> str:
    return f"{n / GB:,.1f}"


def _gib(n: float) -> str:
    return f"{n / GiB:,.1f}"


def _print_serve(d: dict, res: ServeResult) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    hw = res.hardware
    req = res.request
    title = (f"{d['model']} on {res.nodes} x {res.gpus_per_node} {hw.name} — weights {req.weights}, "
             f"KV {req.kv_dtype}, context {req.context:,}, batch {req.batch}")
    t = Table(title=title, title_justify="left")
    for col in ("#", "TP", "PP", "DP", "EP", "GPUs", "GB/dev", "GiB/dev", "fits", "tok/s/seq", "tok/s all",
                "prefill s"):
        t.add_column(col, justify="center" if col == "fits" else "right")
    usable = res.plans[0].usable_bytes if res.plans else 0
    best = res.best
    if best is not None:
        m = best.memory
        t.caption = (f"#1 per device: weights {_gb(m.weights)} GB + KV {_gb(m.kv_cache)} GB + activations "
                     f"{_gb(m.activations)} GB + overhead {_gb(m.overhead)} GB")
    for i, p in enumerate(res.plans[:len(d["plans"])], 1):
        lay, m = p.layout, p.memory
        t.add_row(str(i), str(lay.tp), str(lay.pp), str(lay.dp), str(lay.ep) if lay.ep > 1 else "-",
                  str(lay.devices), _gb(m.total), _gib(m.total), "[green]yes[/]" if p.fits else "[red]no[/]",
                  f"{p.decode_tok_s_per_seq:,.1f}", f"{p.decode_tok_s_total:,.1f}", f"{p.prefill_s:.3f}")
    con.print(t)
    con.print(f"usable per device: {_gb(usable)} GB ({_gib(usable)} GiB) = {req.gpu_memory_utilization:g} x "
              f"{_gb(hw.memory_bytes)} GB; {d['layouts_considered']} layouts considered"
              + ("  [yellow](ROUGH cpu figures)[/]" if hw.rough else ""))
    if not d["fits"]:
        con.print(f"[bold red]{d['remedy']}[/]")
        return
    best = res.best
    for n in best.notes:
        con.print(f"  note: {n}")
    L = d["launch"]
    con.print(f"\n[bold]Launch ({best.layout.label()}, {L['layout']['nodes']} node(s))[/]")
    for line in L["vllm_multinode"]:
        con.print(line, markup=False, highlight=False)
    con.print("# vLLM" + (" (one line per node)" if len(L["vllm"]) > 1 else ""), markup=False)
    for line in L["vllm"]:
        con.print(line, markup=False, highlight=False, soft_wrap=True)
    con.print("# SGLang" + (" (one line per node)" if len(L["sglang"]) > 1 else ""), markup=False)
    for line in L["sglang"]:
        con.print(line, markup=False, highlight=False, soft_wrap=True)
    for n in L["notes"]:
        con.print(f"  note: {n}")
    con.print("\n[dim]assumptions: " + "; ".join(res.assumptions) + "[/]")


def _print_train(d: dict, res: TrainResult) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    hw = res.hardware
    t = Table(title=f"{d['model']} training on {res.nodes} x {res.gpus_per_node} {hw.name} — ZeRO-{res.zero}, "
                    f"seq {res.seq:,}, micro-batch {res.micro_batch}", title_justify="left")
    for col in ("#", "TP", "PP", "DP", "recomp", "GB/GPU", "GiB/GPU", "states", "acts", "fits", "tok/s"):
        t.add_column(col, justify="center" if col in ("fits", "recomp") else "right")
    for i, p in enumerate(res.plans[:len(d["plans"])], 1):
        lay = p.layout
        t.add_row(str(i), str(lay.tp), str(lay.pp), str(lay.dp), p.recompute, _gb(p.per_gpu_bytes),
                  _gib(p.per_gpu_bytes), _gb(p.states_bytes), _gb(p.activations_bytes),
                  "[green]yes[/]" if p.fits else "[red]no[/]", f"{p.tokens_per_s:,.0f}")
    con.print(t)
    if not d["fits"]:
        con.print(f"[bold red]{d['remedy']}[/]")
        return
    ds = d["deepspeed"]
    con.print("\n[bold]DeepSpeed (ds_config.json)[/]")
    con.print(launch.deepspeed_json(ds["config"]), markup=False, highlight=False)
    con.print(ds["command"], markup=False, highlight=False, soft_wrap=True)
    for n in ds["notes"]:
        con.print(f"  note: {n}")
    con.print("\n[dim]assumptions: " + "; ".join(res.assumptions) + "[/]")


def plan_command(model: str, hardware: str, gpus_per_node: int = 8, nodes: int = 1, context: int = 4096,
                 batch: int = 1, weights: str | None = None, kv_dtype: str = "bf16", train: bool = False,
                 zero: int = 3, seq: int = 4096, micro_batch: int = 1, top: int = 5, json_out: bool = False) -> None:
    """Does MODEL fit on the hardware, which layout is best, and how to launch it."""
    check_cluster(gpus_per_node, nodes)
    if top < 1:
        raise SizewiseError(f"--top must be at least 1 (got {top})")
    hw: Accelerator = get_hardware(hardware)
    if hw.name == "cpu" and (gpus_per_node > 1 or nodes > 1):
        import sys
        print("note: --hardware cpu plans this one machine (1 device, 1 node)", file=sys.stderr)
        gpus_per_node, nodes = 1, 1
    cfg, name = load_config(model)
    inv = inventory_from_config(cfg, name)
    if train:
        res = plan_training(inv, hw, gpus_per_node=gpus_per_node, nodes=nodes, zero=zero, seq=seq,
                            micro_batch=micro_batch)
        d = train_dict(res, top)
        if json_out:
            print(json.dumps(d, indent=2))
        else:
            _print_train(d, res)
        return
    gguf = model == "bundled" or model.lower().endswith(".gguf")
    native = None if gguf else native_format(cfg)
    fmt = weights or native or "bf16"
    res = plan_serving(inv, hw, gpus_per_node=gpus_per_node, nodes=nodes, weights=fmt, context=context,
                       batch=batch, kv_dtype=kv_dtype)
    if gguf and weights is None:
        res.assumptions.append("GGUF input: its own block types are not planned here; weights taken as bf16 "
                               "(pass --weights q4_0 / q4_k_m / q8_0 ... for the file's scheme)")
    d = serve_dict(res, top, model_id_for(model, name), native)
    if json_out:
        print(json.dumps(d, indent=2))
    else:
        _print_serve(d, res)


def hardware_dicts() -> list[dict]:
    return [a.to_dict() for a in catalog()]


def hardware_command(json_out: bool = False) -> None:
    """The catalog, each entry with its datasheet."""
    entries = catalog()
    if json_out:
        print(json.dumps({"units": {"GB": GB, "GiB": GiB, "bandwidth": "bytes/s", "flops": "dense TFLOPS"},
                          "hardware": [a.to_dict() for a in entries]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Hardware catalog (dense TFLOPS; memory in GB = 1e9 B)", title_justify="left")
    for col in ("name", "GB", "GiB", "memory", "TB/s", "bf16 TF", "fp8 TF", "link GB/s"):
        t.add_column(col, justify="left" if col in ("name", "memory") else "right")
    for a in entries:
        t.add_row(a.name + (" (rough)" if a.rough else ""), _gb(a.memory_bytes), _gib(a.memory_bytes), a.memory_type,
                  f"{a.hbm_bandwidth / 1e12:.2f}", f"{a.bf16_tflops:,.1f}",
                  "-" if a.fp8_tflops is None else f"{a.fp8_tflops:,.1f}",
                  f"{a.interconnect_bandwidth / 1e9:,.0f}" if a.interconnect_bandwidth else "PCIe")
    con = Console()
    con.print(t)
    con.print("[bold]Sources[/]")
    for a in entries:
        con.print(f"  {a.name} [{', '.join(a.aliases)}]: {a.interconnect}; {a.pcie}. {a.source}"
                  + (f" — {a.notes}" if a.notes else ""), highlight=False, markup=False)
