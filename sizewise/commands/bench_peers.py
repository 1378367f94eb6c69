"""`sizewise bench-serve MODEL --peer vllm,llamacpp`: sizewise's server and each installed peer on the same
weights, the same load over HTTP, one table.

The servers run one after another (never two at once: they would share the cores), each as its own
process: start, wait for /v1/models, a short warm-up, then every concurrency level, then stop (the whole
process group). A peer that is not installed, whose weights cannot be written, or that exits or hangs at
start is skipped with one printed line and the run goes on. Whatever happens (an error, Ctrl-C, SIGTERM),
the server that is running is stopped before bench-serve returns.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from pathlib import Path
from typing import Callable, Iterator

from sizewise.errors import SizewiseError
from sizewise.serve.openai_load import WORKLOADS, TextReq, mixed_text_workload, run_text_load, story_workload
from sizewise.serve.peers import SIZEWISE, PeerContext, PeerProcess, PeerSpec, PeerUnavailable, workdir

WARMUP = [TextReq("Hello", 4, True), TextReq("The Python language", 4, True)]


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM becomes SystemExit in this (the main) thread, so `finally` blocks stop the running server."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a test calling us from a worker): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def workload_for(workload: str, concurrency: int, mixed: list[TextReq] | None) -> list[TextReq]:
    if workload == "story":
        return story_workload(concurrency)
    assert mixed is not None
    return mixed


def bench_server(spec: PeerSpec, ctx: PeerContext, levels: list[int], workload: str, mixed: list[TextReq] | None,
                 timeout_s: float, say: Callable[[str], None]) -> dict:
    """One server: probe, launch, load at each level, stop. The row for the JSON; PeerUnavailable to skip it."""
    from sizewise.serve.server import free_port

    why = spec.probe(ctx)
    if why:
        raise PeerUnavailable(why)
    port = free_port()
    launch = spec.launch(ctx, port)
    say(f"{spec.name}: starting ({launch.dtype}, {launch.weights})")
    proc = PeerProcess(spec.name, launch, port, ctx.workdir / f"{spec.name}.log")
    row = {"name": spec.name, "weights": launch.weights, "dtype": launch.dtype, "version": launch.version,
           "command": launch.argv, "levels": [], "loadavg_1m_before": _loadavg()}
    with proc.start(timeout_s):
        row["startup_s"] = round(proc.startup_s or 0.0, 1)
        run_text_load(proc.url, ctx.served_name, WARMUP, 2)  # first-call costs stay out of the numbers
        for c in levels:
            reqs = workload_for(workload, c, mixed)
            s = run_text_load(proc.url, ctx.served_name, reqs, c)
            s["loadavg_1m_after"] = _loadavg()
            row["levels"].append(s)
            say(f"{spec.name} c={c}: {s['tokens_per_s']:.1f} tok/s, {s['requests_per_s']:.2f} req/s, "
                f"{s['completed_ok']}/{s['requests']} ok")
            if proc.proc.poll() is not None:
                row["died"] = f"exited with status {proc.proc.returncode} during the load at concurrency {c}"
                say(f"{spec.name}: {row['died']}; its remaining levels are not run")
                break
    row["loadavg_1m_after"] = _loadavg()  # includes this server's own load: > cores means others were running too
    return row


def _loadavg() -> float | None:
    """The 1-minute load average: how busy the (shared) machine was, to judge a row's noise."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_servers(servers: list[PeerSpec], ctx: PeerContext, levels: list[int], workload: str,
                mixed: list[TextReq] | None, timeout_s: float, say: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """Each server in turn; (rows, skipped [{name, reason}])."""
    rows, skipped = [], []
    with _sigterm_raises():
        for spec in servers:
            try:
                rows.append(bench_server(spec, ctx, levels, workload, mixed, timeout_s, say))
            except Exception as e:  # noqa: BLE001 - PeerUnavailable, or a peer's HTTP answers we could not read
                why = str(e) if isinstance(e, PeerUnavailable) else f"failed: {e.__class__.__name__}: {str(e)[:200]}"
                skipped.append({"name": spec.name, "reason": why})
                say(f"peer {spec.name}: skipped ({why})")
    return rows, skipped


def bench_peers_command(model: str, peers: list[PeerSpec], concurrency: list[int], workload: str, requests: int,
                        max_tokens: int, seed: int, dtype: str, kv_memory: str | None, max_batch: int, block_size: int,
                        out: str, vllm_python: str | None = None, llamacpp_python: str | None = None,
                        startup_timeout: float = 600.0, peer_dir: str | None = None,
                        include_sizewise: bool = True) -> dict:
    from rich.console import Console

    from sizewise.evaluate.machine import command_line, cores, machine_info
    from sizewise.io.atomic import atomic_write_json

    if workload not in WORKLOADS:
        raise SizewiseError(f"unknown --workload {workload!r}: choose {' or '.join(WORKLOADS)}")
    if requests < 1 or max_tokens < 1 or not concurrency or any(c < 1 for c in concurrency):
        raise SizewiseError("--requests, --max-tokens and every --concurrency value must be at least 1")
    if startup_timeout <= 0:
        raise SizewiseError(f"--peer-timeout must be positive (got {startup_timeout})")
    console = Console(width=None if Console().is_terminal else 160)
    say = console.print
    mixed = None
    if workload == "mixed":
        from sizewise.io.model_load import load_model

        lm = load_model(model)  # the tokenizer only; the servers load their own copies
        mixed = mixed_text_workload(lm.tokenizer, requests, max_tokens, seed=seed)
        del lm
    tmp = workdir(peer_dir)
    wd = Path(peer_dir) if peer_dir else Path(tmp.name)
    wd.mkdir(parents=True, exist_ok=True)
    sw_args = ["--dtype", dtype, "--kv-memory", kv_memory or "1GiB", "--max-batch", str(max_batch),
               "--block-size", str(block_size), "--latency-target", "0", "--max-waiting", "4096"]
    ctx = PeerContext(model=model, served_name="bench", workdir=wd, threads=cores(), vllm_python=vllm_python,
                      llamacpp_python=llamacpp_python, sizewise_args=sw_args,
                      log=lambda m: console.print(m, markup=False))
    servers = ([SIZEWISE] if include_sizewise else []) + peers
    try:
        rows, skipped = run_servers(servers, ctx, concurrency, workload, mixed, startup_timeout,
                                    lambda m: console.print(m, markup=False))
    finally:
        if tmp is not None:
            tmp.cleanup()
    wl = ({"name": "story", "requests_per_level": {str(c): len(story_workload(c)) for c in concurrency},
           "max_tokens": 64, "temperature": 0, "fixed_length": False} if workload == "story" else
          {"name": "mixed", "requests": requests, "max_tokens": max_tokens, "seed": seed, "temperature": 0,
           "fixed_length": True, "prompt_chars": [len(r.prompt) for r in mixed or []],
           "output_tokens": [r.max_tokens for r in mixed or []]})
    result = {"benchmark": "bench_serve_peers", "command": command_line(), "machine": machine_info(),
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": model,
              "workload": wl, "concurrency": concurrency, "servers": rows, "skipped": skipped,
              "note": "servers run one at a time on this machine; the same streamed /v1/completions client for all; "
                      "tok/s = completion tokens (usage, else streamed chunks) / wall seconds of the level"}
    _print(console, result)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    console.print(f"wrote {path}")
    return result


def _f(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _print(console, r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"bench-serve {r['model']} --peer: {r['workload']['name']} workload, same HTTP client for every server")
    for col in ("server", "weights", "conc.", "tok/s", "x sizewise", "req/s", "TTFT p50 s", "TTFT p95 s", "ok", "tokens"):
        t.add_column(col, justify="left" if col in ("server", "weights") else "right")
    base = {s["concurrency"]: s["tokens_per_s"] for row in r["servers"] if row["name"] == "sizewise" for s in row["levels"]}
    for row in r["servers"]:
        for s in row["levels"]:
            b = base.get(s["concurrency"])
            t.add_row(row["name"], row["dtype"], str(s["concurrency"]), f"{s['tokens_per_s']:.1f}",
                      _f(s["tokens_per_s"] / b if b else None, ".2f"), f"{s['requests_per_s']:.2f}",
                      _f(s["ttft_s"]["p50"]), _f(s["ttft_s"]["p95"]), f"{s['completed_ok']}/{s['requests']}",
                      f"{s['output_tokens']} ({s['tokens_from']})")
    console.print(t)
    for s in r["skipped"]:
        console.print(f"skipped {s['name']}: {s['reason']}", markup=False)
    if any(row.get("died") for row in r["servers"]):
        for row in r["servers"]:
            if row.get("died"):
                console.print(f"{row['name']}: {row['died']}", markup=False)
