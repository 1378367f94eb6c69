"""`sizewise serve` and `sizewise bench-serve`: wiring of the serving engine (sizewise/serve/)."""
from __future__ import annotations

import logging
from pathlib import Path

from sizewise.errors import SizewiseError

log = logging.getLogger("sizewise.serve")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _load(model: str, dtype: str, recipe: str | None):
    import torch

    from sizewise.io.model_load import load_model

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise SizewiseError(f"unknown --dtype {dtype!r}: choose fp32, bf16 or fp16")
    lm = load_model(model, dtypes[dtype])
    if recipe:
        from sizewise.compression.apply import compress
        from sizewise.compression.recipes import get_recipe

        cfg = get_recipe(recipe)
        if getattr(cfg, "needs_calibration", False):
            raise SizewiseError(f"recipe {recipe!r} needs calibration: compress it first with `sizewise compress` and serve the output directory")
        compress(lm.model, cfg)
    return lm


def _engine_config(kv_memory: str | None, max_batch: int, block_size: int, max_waiting: int, latency_target: float | None,
                   max_stream_buffer: int | None = 512):
    from sizewise.serve.engine import EngineConfig
    from sizewise.units import parse_size

    if max_batch < 1:
        raise SizewiseError(f"--max-batch must be at least 1 (got {max_batch})")
    if block_size < 1:
        raise SizewiseError(f"--block-size must be at least 1 (got {block_size})")
    if max_stream_buffer is not None and max_stream_buffer < 1:
        raise SizewiseError(f"--max-stream-buffer must be at least 1 (got {max_stream_buffer})")
    return EngineConfig(kv_memory_bytes=parse_size(kv_memory) if kv_memory else None, max_batch=max_batch,
                        block_size=block_size, max_waiting=max_waiting, latency_target_s=latency_target,
                        max_buffered_deltas=max_stream_buffer)


def _model_name(model: str) -> str:
    return "bundled" if model == "bundled" else Path(model).name


def serve_command(model: str, host: str, port: int, kv_memory: str | None, max_batch: int, block_size: int = 16,
                  max_waiting: int = 256, dtype: str = "fp32", recipe: str | None = None, name: str | None = None,
                  latency_target: float | None = 0.5, drain_s: float = 30.0, max_body_bytes: str = "1MiB",
                  max_stream_buffer: int = 512, socket_sndbuf: str | None = None) -> None:
    from sizewise.evaluate.machine import set_threads
    from sizewise.serve.api import create_app
    from sizewise.serve.engine import Engine
    from sizewise.serve.server import run_foreground
    from sizewise.units import fmt_bytes

    _logging()
    if not (0 < port < 65536):
        raise SizewiseError(f"--port must be 1-65535 (got {port})")
    from sizewise.units import parse_size

    cfg = _engine_config(kv_memory, max_batch, block_size, max_waiting, latency_target, max_stream_buffer)
    body_limit = parse_size(max_body_bytes)
    if body_limit < 1024:
        raise SizewiseError(f"--max-body-bytes must be at least 1KiB (got {max_body_bytes})")
    set_threads()
    lm = _load(model, dtype, recipe)
    engine = Engine(lm.model, lm.tokenizer, cfg)
    name = name or _model_name(model)
    p = engine.pool
    log.info("sizewise serve: model %s (%s) on http://%s:%d; KV pool %d blocks x %d tokens = %s (%s layout, %d B/token); "
             "max context %d, max batch %d", name, lm.source, host, port, p.num_blocks, p.block_size, fmt_bytes(p.total_bytes),
             p.layout.kind, p.layout.bytes_per_token, engine.max_model_len, max_batch)
    sndbuf = parse_size(socket_sndbuf) if socket_sndbuf else None
    run_foreground(create_app(engine, name, drain_s=drain_s, max_body_bytes=body_limit), engine, host, port, drain_s, sndbuf)
    log.info("sizewise serve: stopped (%s)", engine.stats()["finished"])


def bench_serve_command(model: str, requests: int, concurrency: list[int], max_tokens: int, kv_memory: str | None,
                        max_batch: int, block_size: int, dtype: str, recipe: str | None, static_batch: int,
                        baselines: bool, soak_requests: int, soak_model: str | None, duration_s: float,
                        out: str, seed: int, threads: int | None = None) -> dict:
    import datetime as dt

    from rich.console import Console

    from sizewise.evaluate.machine import command_line, machine_info, set_threads
    from sizewise.io.atomic import atomic_write_json
    from sizewise.serve import bench
    from sizewise.serve.api import create_app
    from sizewise.serve.engine import Engine
    from sizewise.serve.loadgen import mixed_workload, run_load
    from sizewise.serve.server import BackgroundServer
    from sizewise.units import fmt_bytes

    _logging()
    logging.getLogger("sizewise.serve").setLevel(logging.WARNING)  # one line per request would flood the bench
    if requests < 1 or max_tokens < 1 or any(c < 1 for c in concurrency):
        raise SizewiseError("--requests, --max-tokens and every --concurrency value must be at least 1")
    console = Console(width=None if Console().is_terminal else 160)
    set_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg = _engine_config(kv_memory or "1GiB", max_batch, block_size, max(1024, 2 * requests), None)
    cfg.threads = threads  # fixed by --threads; None: the engine follows the free cores
    lm = _load(model, dtype, recipe)
    name = _model_name(model)
    reqs = mixed_workload(lm.tokenizer, requests, max_tokens, seed=seed)
    result: dict = {"benchmark": "bench_serve", "command": command_line(), "machine": machine_info(),
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "model": name, "dtype": dtype, "recipe": recipe, "workload": {
                        "requests": requests, "max_tokens": max_tokens, "seed": seed,
                        "prompt_tokens": [len(r.prompt_ids) for r in reqs], "output_tokens": [r.max_tokens for r in reqs]},
                    "engine": {"block_size": block_size, "max_batch": max_batch}, "serve": [], "note":
                    "throughput = generated tokens / wall seconds; ratios are against baselines measured in this run"}
    engine = Engine(lm.model, lm.tokenizer, cfg)
    result["engine"].update({"kv_pool_blocks": engine.pool.num_blocks, "kv_pool_bytes": engine.pool.total_bytes,
                             "kv_bytes_per_token": engine.pool.layout.bytes_per_token})

    def serve_phase() -> None:  # in a helper thread: the engine loop runs on this (the model's) thread, see engine.py
        with BackgroundServer(create_app(engine, name)) as srv:
            run_load(srv.url, name, reqs[:2], 2)  # warm-up: first-call costs stay out of the numbers
            for c in concurrency:
                with console.status(f"serving {requests} requests at concurrency {c}"):
                    s = bench._serve_load(engine, name, reqs, c, duration_s, srv.url)
                result["serve"].append(s)
                console.print(f"concurrency {c}: {s['tokens_per_s']:.1f} tok/s, {s['completed_ok']}/{requests} ok")

    engine.run_while(serve_phase)
    if baselines:
        with console.status("baseline (a): sequential generate()"):
            result["baseline_sequential"] = bench.baseline_sequential(lm.model, reqs)
        with console.status(f"baseline (b): static padded batches of {static_batch}"):
            result["baseline_static"] = bench.baseline_static(lm.model, reqs, static_batch, pad_id=lm.tokenizer.pad_token_id or 0)
        base = result["baseline_sequential"]["tokens_per_s"]
        for s in result["serve"]:
            s["throughput_vs_sequential"] = s["tokens_per_s"] / base
        st = next((s for s in result["serve"] if s["concurrency"] == static_batch), None)
        if st is not None:
            result["kv_peak_vs_static"] = st["peak_kv_bytes"] / result["baseline_static"]["peak_kv_bytes"]
    if soak_requests:
        slm = lm if soak_model in (None, model) else _load(soak_model, dtype, None)
        seng = Engine(slm.model, slm.tokenizer, cfg)
        sname = _model_name(soak_model or model)

        def soak_phase() -> None:
            with BackgroundServer(create_app(seng, sname)) as srv:
                with console.status(f"soak: {soak_requests} short requests, 10 % cancelled, 5 % disconnected"):
                    result["soak"] = {"model": sname, **bench.soak(seng, sname, slm.tokenizer, soak_requests, 16, srv.url)}

        seng.run_while(soak_phase)
    _print(console, result, fmt_bytes)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    console.print(f"wrote {path}")
    return result


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def _print(console, r: dict, fmt_bytes) -> None:
    from rich.table import Table

    t = Table(title=f"bench-serve {r['model']} {r['dtype']}{' ' + r['recipe'] if r['recipe'] else ''}: "
                    f"{r['workload']['requests']} mixed-length requests")
    for col in ("concurrency", "tok/s", "x sequential", "TTFT p50/p95 s", "latency p50/p95/p99 s", "peak KV", "frag mean/peak", "preempt", "ok"):
        t.add_column(col, justify="right")
    for s in r["serve"]:
        t.add_row(str(s["concurrency"]), f"{s['tokens_per_s']:.1f}", _fmt(s.get("throughput_vs_sequential"), ".2f"),
                  f"{_fmt(s['ttft_s']['p50'])}/{_fmt(s['ttft_s']['p95'])}",
                  f"{_fmt(s['latency_s']['p50'])}/{_fmt(s['latency_s']['p95'])}/{_fmt(s['latency_s']['p99'])}",
                  fmt_bytes(s["peak_kv_bytes"]), f"{s['mean_fragmentation']:.1%}/{s['peak_fragmentation']:.1%}",
                  str(s["preemptions"]), f"{s['completed_ok']}/{s['requests']}")
    if "baseline_sequential" in r:
        b = r["baseline_sequential"]
        t.add_row("(a) sequential generate()", f"{b['tokens_per_s']:.1f}", "1.00", "", "", "", "", "", "")
        b = r["baseline_static"]
        t.add_row(f"(b) static batch {b['batch']}", f"{b['tokens_per_s']:.1f}",
                  _fmt(b["tokens_per_s"] / r["baseline_sequential"]["tokens_per_s"], ".2f"), "", "",
                  fmt_bytes(b["peak_kv_bytes"]), "", "", "")
    console.print(t)
    if "kv_peak_vs_static" in r:
        console.print(f"peak KV memory vs static batching: {r['kv_peak_vs_static']:.1%}")
    if "soak" in r:
        s = r["soak"]
        console.print(f"soak ({s['model']}): {s['requests']} requests, {s['completed_ok']} ok, {s['failed']} failed, "
                      f"{s['cancelled']} cancelled, {s['disconnected']} disconnected; leaked blocks {s['leaked_blocks']}, "
                      f"errored {s['errored_requests']}, crashed steps {s['crashed_steps']}, health {s['health_status']}, "
                      f"answers after: {s['answers_after']}")
