"""Slow consumers must not grow the server (issue 16): many streams that stop reading, plus normal traffic,
against a real `sizewise serve`, sampling the server's RSS over time.

The server runs with --socket-sndbuf 16KiB (a flag of `sizewise serve`): on loopback the kernel otherwise
autotunes a send buffer of several MiB, which swallows a whole stalled stream before the engine ever sees
back-pressure (measured: an 8000-token stream finished into the kernel's buffers).
A stalled client is a raw socket with a tiny receive buffer that reads the response headers and then
never reads again, held open for --hold seconds, closed, and replaced. The engine's per-request buffer cap
(--max-stream-buffer) cancels each such stream once it falls that many chunks behind and frees its KV blocks;
what a stalled socket can still pin is the cap plus the kernel's socket buffers. Normal clients stream short
greedy completions all along and must all finish with their full token count.

Target: RSS flat within 10 % over the soak (max and end vs the first sample after a warm-up).

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_slow_consumer.py [--minutes 10] [--model tiny|bundled]
  -> benchmarks/results/slow_consumer.json
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_harness import ROOT, ServeProcess, rss_bytes, tiny_model_dir  # noqa: E402


def stalled_stream(port: int, body: dict) -> socket.socket:
    """Open a streamed completion, read only the start of the reply, then stop reading (the socket stays open)."""
    raw = json.dumps(body).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a small window: the server's writes back up soon
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    s.recv(256)
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="soak duration")
    ap.add_argument("--model", default="tiny", help="tiny (the tests' random llama) or bundled")
    ap.add_argument("--socket-sndbuf", default="16KiB", help="the server's per-connection kernel send buffer ('' for the "
                    "kernel default, which on loopback absorbs whole multi-MiB streams before the cap is reached)")
    ap.add_argument("--stalled", type=int, default=16, help="stalled streams kept open at any time")
    ap.add_argument("--hold", type=float, default=45.0, help="seconds a stalled stream stays open before closing")
    ap.add_argument("--normal", type=int, default=3, help="concurrent normal streaming clients")
    ap.add_argument("--max-stream-buffer", type=int, default=512)
    ap.add_argument("--context", type=int, default=8192, help="tiny model's context; stalled streams ask for nearly all of it")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds of traffic before the reference RSS sample")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "slow_consumer.json"))
    a = ap.parse_args()

    from sizewise.evaluate.machine import command_line, machine_info
    from sizewise.io.atomic import atomic_write_json

    work = Path(tempfile.mkdtemp(prefix="sizewise-slow-"))
    model = str(tiny_model_dir(work / "tiny", a.context)) if a.model == "tiny" else a.model
    ctx_tokens = a.context if a.model == "tiny" else 2048
    srv = ServeProcess(model, "--kv-memory", "256MiB", "--max-batch", "64", "--max-stream-buffer",
                       str(a.max_stream_buffer), "--latency-target", "0",
                       *(["--socket-sndbuf", a.socket_sndbuf] if a.socket_sndbuf else []), log_path=work / "serve.log")
    srv.start()
    stop = threading.Event()
    samples: list[tuple[float, int]] = []
    counts = {"stalled_opened": 0, "stalled_open_failed": 0, "normal_ok": 0, "normal_failed": 0}
    errors: list[str] = []
    lock = threading.Lock()
    t_start = time.monotonic()
    max_new = ctx_tokens - 16  # long streams: far more chunks than the buffer cap
    slow_body = {"model": srv.name, "prompt": [1, 72, 101, 108, 108, 111], "max_tokens": max_new, "stream": True,
                 "temperature": 0, "ignore_eos": True}

    def sampler():
        while not stop.is_set():
            samples.append((time.monotonic() - t_start, rss_bytes(srv.pid)))
            stop.wait(2.0)

    def stalled_worker(k: int):
        open_socks: list[tuple[float, socket.socket]] = []
        while not stop.is_set():
            now = time.monotonic()
            while open_socks and now - open_socks[0][0] > a.hold:
                open_socks.pop(0)[1].close()
            while len(open_socks) < max(1, a.stalled // 2) and not stop.is_set():
                try:
                    open_socks.append((time.monotonic(), stalled_stream(srv.port, slow_body)))
                    with lock:
                        counts["stalled_opened"] += 1
                except OSError as e:
                    with lock:
                        counts["stalled_open_failed"] += 1
                        errors.append(f"stalled: {e}")
                    stop.wait(1.0)
            stop.wait(0.5)
        for _, s in open_socks:
            s.close()

    def normal_worker(k: int):
        with httpx.Client(timeout=120) as c:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"model": srv.name, "prompt": [1] + [4 + (k * 31 + i * 7 + j) % 250 for j in range(12)],
                        "max_tokens": 24, "stream": True, "temperature": 0, "ignore_eos": True}
                got, err = 0, None
                try:
                    with c.stream("POST", srv.url + "/v1/completions", json=body) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: {"):
                                obj = json.loads(line[6:])
                                if "error" in obj:
                                    err = obj["error"]["message"]
                                elif obj.get("usage"):
                                    got = obj["usage"]["completion_tokens"]
                except httpx.HTTPError as e:
                    err = f"{type(e).__name__}: {e}"
                with lock:
                    if got == 24 and err is None:
                        counts["normal_ok"] += 1
                    else:
                        counts["normal_failed"] += 1
                        errors.append(err or f"{got} tokens")

    threads = [threading.Thread(target=sampler, daemon=True)]
    threads += [threading.Thread(target=stalled_worker, args=(k,), daemon=True) for k in range(2)]
    threads += [threading.Thread(target=normal_worker, args=(k,), daemon=True) for k in range(a.normal)]
    for t in threads:
        t.start()
    deadline = t_start + a.warmup + a.minutes * 60
    while time.monotonic() < deadline:
        time.sleep(5)
        r = samples[-1][1] if samples else 0
        print(f"t={time.monotonic() - t_start:6.0f}s rss={r / 2**20:7.1f} MiB {counts}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    st = srv.wait_idle()
    cancelled = srv.metric("sizewise_slow_consumer_cancellations_total")
    by_reason = srv.health()["engine"]["finished"]
    rc = srv.stop()

    ref = next((r for t, r in samples if t >= a.warmup), samples[0][1])
    soak = [r for t, r in samples if t >= a.warmup]
    result = {
        "benchmark": "bench_slow_consumer", "command": command_line(), "machine": machine_info(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": a.model,
        "settings": {"minutes": a.minutes, "warmup_s": a.warmup, "stalled_streams": a.stalled, "hold_s": a.hold,
                     "normal_clients": a.normal, "max_stream_buffer": a.max_stream_buffer, "stalled_max_tokens": max_new,
                     "socket_sndbuf": a.socket_sndbuf or None},
        "rss_bytes": {"first_sample": samples[0][1], "start": ref, "end": soak[-1], "max": max(soak), "min": min(soak)},
        "rss_ratio": {"max_over_start": max(soak) / ref, "end_over_start": soak[-1] / ref},
        "flat_within_10pct": max(soak) / ref <= 1.10,
        "rss_samples_mib": [[round(t, 1), round(r / 2**20, 2)] for t, r in samples],
        "counts": counts, "slow_consumer_cancellations": cancelled, "finished_by_reason": by_reason,
        "leaked_kv_blocks": st["kv_leaked_blocks"], "kv_blocks_used_after": st["kv_blocks_used"],
        "server_exit_status": rc, "errors": errors[:10],
    }
    atomic_write_json(Path(a.out), result)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"slow consumers: {a.minutes:g} min, {a.model} model")
    for col in ("RSS start MiB", "end", "max", "max/start", "stalled opened", "cancelled (cap)", "normal ok/failed",
                "leaked blocks"):
        t.add_column(col, justify="right")
    rb = result["rss_bytes"]
    t.add_row(f"{rb['start'] / 2**20:.1f}", f"{rb['end'] / 2**20:.1f}", f"{rb['max'] / 2**20:.1f}",
              f"{result['rss_ratio']['max_over_start']:.3f}", str(counts["stalled_opened"]), f"{cancelled:.0f}",
              f"{counts['normal_ok']}/{counts['normal_failed']}", str(st["kv_leaked_blocks"]))
    Console().print(t)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
