"""`sizewise estimate` and `sizewise presets`: wiring from a MODEL argument to the size modules,
and the tables / JSON they print. The arithmetic lives in sizewise/size/."""
from __future__ import annotations

import json
from dataclasses import asdict

from sizewise.arch.inventory import ParamInventory
from sizewise.errors import SizewiseError
from sizewise.size.formats import FORMATS, FormatSize, all_sizes, get_format
from sizewise.size.memory import InferenceMemory, inference_memory, kv_bits
from sizewise.size.training import TrainingMemory, training_memory, validate_training_args
from sizewise.units import GB, GiB, fmt_bytes, fmt_gb, fmt_gib

SCHEMA_VERSION = 1


def _validate(context: int, batch: int, weights: str, kv_dtype: str) -> None:
    for name, v in (("context", context), ("batch", batch)):
        if v < 1:
            raise SizewiseError(f"--{name} must be a positive integer, got {v}")
    get_format(weights)
    kv_bits(kv_dtype)


_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def native_format(cfg: dict) -> str | None:
    """The format the model is published in, from its config.json (None when it does not say)."""
    q = cfg.get("quantization_config") or {}
    if isinstance(q, dict) and q.get("quant_method") == "fp8" and list(q.get("weight_block_size") or []) == [128, 128]:
        return "fp8"
    return _DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or ""))


def params_dict(inv: ParamInventory) -> dict:
    groups = inv.groups()
    return {
        "total": inv.total,
        "activated": inv.activated,
        "mtp": inv.mtp,
        "total_without_mtp": inv.total_without_mtp,
        "groups": {g: {"total": c.total, "activated": c.activated,
                       "share": round(c.total / inv.total, 6) if inv.total else 0.0}
                   for g, c in groups.items()},
    }


def estimate_dict(inv: ParamInventory, context: int = 4096, batch: int = 1, weights: str = "bf16",
                  kv_dtype: str = "bf16", train: bool = False, optimizer: str = "adamw", zero: int = 0,
                  gpus: int = 1, recompute: str = "none", seq: int = 4096, micro_batch: int = 1,
                  native: str | None = None) -> dict:
    """Everything `estimate --json` prints (schema: docs/estimate-schema.md)."""
    _validate(context, batch, weights, kv_dtype)
    validate_training_args(optimizer, zero, gpus, recompute, seq, micro_batch)
    out: dict = {
        "schema": SCHEMA_VERSION,
        "model": inv.name,
        "model_type": inv.arch.model_type,
        "units": {"GB": GB, "GiB": GiB},
        "arch": asdict(inv.arch),
        "params": params_dict(inv),
        "native_format": native,
        "sizes": {name: s.to_dict() for name, s in all_sizes(inv).items()},
        "memory": {"inference": inference_memory(inv, weights, context, batch, kv_dtype).to_dict()},
    }
    if train:
        out["memory"]["training"] = training_memory(inv, optimizer, zero, gpus, recompute, seq, micro_batch).to_dict()
    return out


def estimate_command(model: str, context: int = 4096, batch: int = 1, weights: str = "bf16",
                     kv_dtype: str = "bf16", train: bool = False, optimizer: str = "adamw", zero: int = 0,
                     gpus: int = 1, recompute: str = "none", seq: int = 4096, micro_batch: int = 1,
                     json_out: bool = False) -> None:
    # validate the cheap arguments before reading the model
    _validate(context, batch, weights, kv_dtype)
    validate_training_args(optimizer, zero, gpus, recompute, seq, micro_batch)
    from sizewise.arch.families import inventory_from_config
    from sizewise.arch.resolve import load_config
    cfg, name = load_config(model)
    inv = inventory_from_config(cfg, name)
    native = native_format(cfg)
    if json_out:
        d = estimate_dict(inv, context, batch, weights, kv_dtype, train, optimizer, zero, gpus, recompute,
                          seq, micro_batch, native=native)
        print(json.dumps(d, indent=2))
        return
    sizes = all_sizes(inv)
    mem = inference_memory(inv, weights, context, batch, kv_dtype)
    tm = training_memory(inv, optimizer, zero, gpus, recompute, seq, micro_batch) if train else None
    render(inv, sizes, mem, tm, native)


# --- tables --------------------------------------------------------------------------------

def _console():
    from rich.console import Console
    return Console(width=160)


def render(inv: ParamInventory, sizes: dict[str, FormatSize], mem: InferenceMemory,
           tm: TrainingMemory | None, native: str | None = None) -> None:
    from rich.table import Table
    con = _console()
    con.print(f"[bold]{inv.name}[/bold] ({inv.arch.model_type}): {inv.total:,} parameters stored, "
              f"{inv.activated:,} activated per token")

    t = Table(title="Parameters by group")
    for c in ("group", "total", "activated / token", "share of total"):
        t.add_column(c, justify="left" if c == "group" else "right")
    for g, c in inv.groups().items():
        t.add_row(g, f"{c.total:,}", f"{c.activated:,}" if g != "mtp" else "(not in decoding)",
                  f"{100 * c.total / inv.total:.2f} %")
    t.add_row("[bold]total[/bold]", f"[bold]{inv.total:,}[/bold]", f"[bold]{inv.activated:,}[/bold]", "100.00 %")
    con.print(t)
    if inv.mtp:
        con.print(f"MTP: the checkpoint carries {inv.arch.num_mtp_layers} multi-token-prediction layer(s) "
                  f"(num_nextn_predict_layers) with {inv.mtp:,} parameters: on disk and in the total above, "
                  f"not used in plain decoding. Without MTP: {inv.total_without_mtp:,}.")

    t = Table(title="Size in each storage format (tensor data)")
    for c in ("format", "GB", "GiB", "bits/weight (all)", "bits/quantized weight", "kept high precision"):
        t.add_column(c, justify="right" if c in ("GB", "GiB") or c.startswith("bits") else "left")
    for name, s in sizes.items():
        t.add_row(name + (" (as published)" if name == native else ""), fmt_gb(s.bytes), fmt_gib(s.bytes), f"{s.bits_per_weight:.3f}",
                  f"{s.bits_per_quantized_weight:.3f}", ", ".join(s.kept) or "-")
    con.print(t)
    for name in sizes:
        con.print(f"  [bold]{name}[/bold]: {FORMATS[name].description}")
    con.print("GB = 10^9 bytes, GiB = 2^30 bytes. GGUF sizes follow llama.cpp's per-tensor choices "
              "(output at Q6_K, Q4_K_M's attn_v/ffn_down rule, fallbacks for odd row lengths).")

    t = Table(title=f"Inference memory: weights {mem.weights_format}, KV {mem.kv_dtype}, "
                    f"context {mem.context:,} x batch {mem.batch:,}")
    t.add_column("part")
    t.add_column("bytes", justify="right")
    t.add_column("GB (GiB)", justify="right")
    rows = [("weights", mem.weights), ("KV cache" + (" (MLA latent)" if mem.kv_cache_naive is not None else ""),
                                       mem.kv_cache)]
    rows += [("activations (peak transient)", mem.activations), ("runtime overhead", mem.overhead)]
    for label, v in rows:
        t.add_row(label, f"{v:,}", fmt_bytes(v))
    t.add_row("[bold]total[/bold]", f"[bold]{mem.total_bytes:,}[/bold]", f"[bold]{fmt_bytes(mem.total_bytes)}[/bold]")
    if mem.kv_cache_naive is not None:
        t.add_row("[dim]KV cache if not latent (per-head K and V)[/dim]", f"{mem.kv_cache_naive:,}",
                  fmt_bytes(mem.kv_cache_naive))
    con.print(t)
    for n in mem.notes:
        con.print(f"  - {n}")

    if tm is not None:
        t = Table(title=f"Training memory per GPU: {tm.optimizer}, ZeRO-{tm.zero} over {tm.gpus} GPU(s), "
                        f"recompute {tm.recompute}, seq {tm.seq:,} x micro-batch {tm.micro_batch}")
        t.add_column("part")
        t.add_column("bytes", justify="right")
        t.add_column("GB (GiB)", justify="right")
        for label, v in (("weights (bf16)", tm.weights), ("gradients (bf16)", tm.grads),
                         ("optimizer states", tm.optimizer_states), ("activations", tm.activations)):
            t.add_row(label, f"{v:,}", fmt_bytes(v))
        t.add_row("[bold]per GPU[/bold]", f"[bold]{tm.per_gpu_bytes:,}[/bold]",
                  f"[bold]{fmt_bytes(tm.per_gpu_bytes)}[/bold]")
        t.add_row(f"all {tm.gpus * tm.tp} GPU(s)", f"{tm.total_bytes:,}", fmt_bytes(tm.total_bytes))
        con.print(t)
        for n in tm.notes:
            con.print(f"  - {n}")


# --- presets -------------------------------------------------------------------------------

def presets_rows() -> list[dict]:
    from sizewise.arch.families import inventory_from_config
    from sizewise.arch.presets import list_presets
    rows = []
    for p in list_presets():
        inv = inventory_from_config(p.config(), p.repo_id)
        rows.append({"name": p.name, "repo_id": p.repo_id, "model_type": inv.arch.model_type,
                     "total": inv.total, "activated": inv.activated, "mtp": inv.mtp,
                     "bf16_bytes": all_sizes_bf16(inv)})
    return rows


def all_sizes_bf16(inv: ParamInventory) -> int:
    from sizewise.size.formats import size_in_format
    return size_in_format(inv, "bf16").bytes


def presets_command(json_out: bool = False) -> None:
    rows = presets_rows()
    if json_out:
        print(json.dumps({"presets": rows}, indent=2))
        return
    from rich.table import Table
    t = Table(title="Shipped presets (exact totals from their config.json)")
    for c in ("name", "repo", "type", "total params", "activated / token", "MTP", "bf16"):
        t.add_column(c, justify="right" if c in ("total params", "activated / token", "MTP", "bf16") else "left",
                     no_wrap=True)
    for r in rows:
        t.add_row(r["name"], r["repo_id"], r["model_type"], f"{r['total']:,}", f"{r['activated']:,}",
                  f"{r['mtp']:,}" if r["mtp"] else "-", fmt_gb(r["bf16_bytes"]))
    _console().print(t)
