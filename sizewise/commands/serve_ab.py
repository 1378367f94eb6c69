"""`sizewise serve MODEL --ab SOURCE[:RECIPE]=SHARE ...`: wiring of the A/B server (sizewise/serve/ab.py).

Order matters: every --ab spec and the memory of all variants are checked before the first
model loads, so a typo or a machine too small costs a second, not a load."""
from __future__ import annotations

import logging

from sizewise.errors import SizewiseError

log = logging.getLogger("sizewise.serve")


def build_engines(variants, load, cfg) -> dict:
    """{variant name: Engine}, all metrics in one registry labelled by variant."""
    from sizewise.serve.ab import VariantMetrics
    from sizewise.serve.engine import Engine
    from sizewise.serve.metrics import MetricFamilies

    fam = MetricFamilies(variant_label=True)
    engines = {}
    for v in variants:
        lm = load(v)
        engines[v.name] = Engine(lm.model, lm.tokenizer, cfg,
                                 metrics=VariantMetrics(cfg.alert_rules, variant=v.name, families=fam))
    return engines


def _run_until_signal(server) -> None:
    """uvicorn in a helper thread, SIGINT/SIGTERM handled here. Why not uvicorn on the main thread:
    after its graceful shutdown it re-raises the signal it caught, which kills the process before
    the split's results are recorded. The app's lifespan drains and stops the engines."""
    import signal
    import threading

    def on_signal(signum, _frame):
        log.info("sizewise serve --ab: %s received, draining", signal.Signals(signum).name)
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    t = threading.Thread(target=server.run, name="sizewise-uvicorn")
    t.start()
    while t.is_alive():
        t.join(0.5)  # a timeout, so that signals reach the handler above


def serve_ab_command(model: str, ab: list[str], host: str, port: int, kv_memory: str | None, max_batch: int,
                     block_size: int = 16, max_waiting: int = 256, dtype: str = "fp32", recipe: str | None = None,
                     name: str | None = None, latency_target: float | None = 0.5, drain_s: float = 30.0,
                     seed: int | None = None, record: bool = True, registry: str | None = None,
                     max_body_bytes: str = "1MiB", max_stream_buffer: int = 512) -> dict:
    import uvicorn

    from sizewise.commands.serve import _engine_config, _load, _logging, _model_name
    from sizewise.evaluate.machine import set_threads
    from sizewise.serve.ab import ABApp, check_recipe, plan_variants
    from sizewise.serve.ab_memory import available_memory, check_memory, variant_need
    from sizewise.units import fmt_bytes

    _logging()
    if not (0 < port < 65536):
        raise SizewiseError(f"--port must be 1-65535 (got {port})")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise SizewiseError(f"unknown --dtype {dtype!r}: choose fp32, bf16 or fp16")
    from sizewise.units import parse_size

    cfg = _engine_config(kv_memory, max_batch, block_size, max_waiting, latency_target, max_stream_buffer)
    body_limit = parse_size(max_body_bytes)
    if body_limit < 1024:
        raise SizewiseError(f"--max-body-bytes must be at least 1KiB (got {max_body_bytes})")
    served = name or _model_name(model)
    if recipe:
        check_recipe(recipe, "--recipe")
    variants = plan_variants(model, recipe, served, ab)
    avail = available_memory()
    kv = cfg.kv_memory_bytes or int(cfg.kv_fraction * avail)
    acct = check_memory([variant_need(v.name, v.source, v.recipe, dtype, kv, max_batch) for v in variants], avail)
    log.info("sizewise serve --ab: %d variants need about %s of %s available", len(variants),
             fmt_bytes(acct["needed_bytes"]), fmt_bytes(avail))
    set_threads()
    engines = build_engines(variants, lambda v: _load(v.source, dtype, v.recipe), cfg)
    app = ABApp(variants, engines, served, seed=seed, drain_s=drain_s, max_body_bytes=body_limit)
    for v in variants:
        p = engines[v.name].pool
        log.info("variant %s: %s%s, share %.3f, KV pool %d blocks (%s)", v.name, v.source,
                 f" + {v.recipe}" if v.recipe else "", v.share, p.num_blocks, fmt_bytes(p.total_bytes))
    log.info("sizewise serve --ab: model %s on http://%s:%d; /v1/ab has the per-variant numbers", served, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(drain_s))
    _run_until_signal(uvicorn.Server(config))
    summary = app.summary()
    for r in summary["variants"]:
        log.info("variant %s: %d requests (%d ok, %d errors), latency p50 %s s, TTFT p50 %s s, %s tok/s", r["name"],
                 r["requests"], r["ok"], r["errors"], r["latency_s"]["p50"], r["ttft_s"]["p50"], r["tokens_per_s"])
    from sizewise.registry.results import record_result, serve_ab_records

    record_result("serve-ab", lambda: serve_ab_records(summary, registry), enabled=record, registry=registry)
    return summary
