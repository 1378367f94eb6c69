"""Run the API with uvicorn next to the engine.

`sizewise serve` and `bench-serve` keep the engine loop on the main thread (see engine.py for why: libgomp
on a small CPU) and put uvicorn, or the benchmark's driver, in a helper thread (`Engine.run_while`). Tests use
`BackgroundServer` with the engine's own background thread."""
from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(proc, url: str, timeout: float = 120.0, poll_s: float = 0.2) -> None:
    """Block until GET {url}/health answers 200: how tests and benchmarks know a `sizewise serve` subprocess
    has loaded. RuntimeError if `proc` exits first (with its stderr when that is a pipe) or after `timeout`."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"sizewise serve exited with {proc.returncode} before it was healthy"
                               + (f": {err[-2000:]}" if err else ""))
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:  # refused while starting, 503 while loading (HTTPError), a timeout
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sizewise serve did not come up within {timeout:.0f} s")
        time.sleep(poll_s)


def listen_socket(host: str, port: int, sndbuf: int | None = None) -> socket.socket:
    """A bound, listening TCP socket. sndbuf caps each accepted connection's kernel send buffer (Linux copies it from
    the listener): a client that stops reading then backs up into the engine's stream cap after ~sndbuf bytes,
    instead of after the several MiB a loopback socket autotunes to."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.bind((host, port))
    s.listen(2048)
    s.setblocking(False)
    return s


def run_foreground(app, engine, host: str, port: int, drain_s: float = 30.0, sndbuf: int | None = None) -> None:
    """Blocks until SIGINT/SIGTERM: uvicorn (in a helper thread) stops accepting, waits up to drain_s for open
    requests, then the app's lifespan cancels what is left and stops the engine, whose loop ran on this thread.
    Exits normally (status 0)."""
    log = logging.getLogger("sizewise.serve")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(drain_s))
    server = uvicorn.Server(config)

    def on_signal(signum, _frame):  # runs on this (the engine's) thread between steps
        log.info("sizewise serve: %s received, draining", signal.Signals(signum).name)
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    sock = listen_socket(host, port, sndbuf) if sndbuf else None
    engine.run_while(lambda: server.run(sockets=[sock]) if sock else server.run())
    log.info("sizewise serve: shut down cleanly")


class BackgroundServer:
    """uvicorn in a daemon thread on a free localhost port; `with BackgroundServer(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        self.host, self.port = host, port or free_port(host)
        cfg = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False,
                             timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name="sizewise-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
