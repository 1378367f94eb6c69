"""The `sizewise` command: one thin function per verb. Logic lives in the modules named here."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from sizewise.errors import SizewiseError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Exact parameter counts, sizes and memory for LLMs; measured compression.")


def user_errors(fn: Callable) -> Callable:
    """Bad input prints one line and exits 2: no traceback for a user's mistake."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SizewiseError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except FileNotFoundError as e:
            typer.echo(f"error: file not found: {e.filename or e}", err=True)
            raise typer.Exit(2)

    return wrapper


# --- presets / estimate / inspect / plan (foundation) ---

@app.command()
@user_errors
def presets(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the shipped model presets with their exact totals."""
    from sizewise.commands.estimate import presets_command
    presets_command(json_out=json_out)


@app.command()
@user_errors
def estimate(
    model: str = typer.Argument(..., help="Preset name, config.json, model directory, .gguf file, or 'bundled'."),
    context: int = typer.Option(4096, "--context", help="Tokens of context per sequence for the KV cache."),
    batch: int = typer.Option(1, "--batch", help="Concurrent sequences."),
    weights: str = typer.Option("bf16", "--weights", help="Storage format the weights are served in."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV cache dtype: fp32, bf16, fp16, fp8, int8, int4."),
    train: bool = typer.Option(False, "--train", help="Also estimate training memory."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | adamw-8bit | sgd"),
    zero: int = typer.Option(0, "--zero", help="DeepSpeed ZeRO stage 0-3."),
    gpus: int = typer.Option(1, "--gpus", help="Data-parallel GPUs that ZeRO shards over."),
    recompute: str = typer.Option("none", "--recompute", help="none | selective | full"),
    seq: int = typer.Option(4096, "--seq", help="Training sequence length."),
    micro_batch: int = typer.Option(1, "--micro-batch", help="Training micro-batch per GPU."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (schema: docs/estimate-schema.md)."),
) -> None:
    """Parameters (total, activated), size in every format, inference and training memory."""
    from sizewise.commands.estimate import estimate_command
    estimate_command(model=model, context=context, batch=batch, weights=weights, kv_dtype=kv_dtype,
                     train=train, optimizer=optimizer, zero=zero, gpus=gpus, recompute=recompute,
                     seq=seq, micro_batch=micro_batch, json_out=json_out)


@app.command()
@user_errors
def inspect(
    path: str = typer.Argument(..., help="safetensors file, sharded directory/index, .gguf file, or 'bundled'."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Read tensor headers only (no weights): counts by dtype and group, bytes, check against config."""
    from sizewise.commands.inspect import inspect_command
    inspect_command(path=path, json_out=json_out)


@app.command()
@user_errors
def plan(
    model: str = typer.Argument(..., help="Preset name, config.json, model directory or .gguf file."),
    hardware: str = typer.Option(..., "--hardware", help="Accelerator name (see --list-hardware) or 'cpu'."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    nodes: int = typer.Option(1, "--nodes"),
    context: int = typer.Option(4096, "--context"),
    batch: int = typer.Option(1, "--batch"),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weight format; default: the model's own."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype"),
    train: bool = typer.Option(False, "--train", help="Plan training instead of serving."),
    zero: int = typer.Option(3, "--zero"),
    seq: int = typer.Option(4096, "--seq"),
    micro_batch: int = typer.Option(1, "--micro-batch"),
    top: int = typer.Option(5, "--top", help="How many layouts to show."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Does it fit, how to shard it (TP/PP/DP/EP), and the engine launch command."""
    from sizewise.commands.plan import plan_command
    plan_command(model=model, hardware=hardware, gpus_per_node=gpus_per_node, nodes=nodes,
                 context=context, batch=batch, weights=weights, kv_dtype=kv_dtype, train=train,
                 zero=zero, seq=seq, micro_batch=micro_batch, top=top, json_out=json_out)


@app.command("hardware")
@user_errors
def hardware_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """List the hardware catalog with sources."""
    from sizewise.commands.plan import hardware_command
    hardware_command(json_out=json_out)


# --- compress / eval / study (compression core) ---

# --- prune / share (sparsity) ---

# --- serve / bench-serve (serving) ---


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
