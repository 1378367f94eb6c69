"""A real `sizewise serve` process for the robustness benchmarks (bench_fuzz.py, bench_slow_consumer.py).

The model is either `bundled` (SmolLM2-135M via the existing loader) or `tiny`: the serving tests' tiny
random llama with the byte-level tokenizer, written once as an HF directory (safetensors + tokenizer.json),
so the benchmark exercises the same CLI path a user runs while keeping 2 shared cores free enough for
thousands of requests. Metrics are read back from /metrics and /health, as an operator would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tiny_model_dir(path: Path, max_positions: int = 1024) -> Path:
    """The tests' tiny llama (fp32, vocab = the byte tokenizer's 260 ids) saved as an HF directory."""
    import torch

    from tests.serve import tiny

    if (path / "config.json").is_file():
        return path
    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=max_positions)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


class ServeProcess:
    """`python -m sizewise.cli serve MODEL ...` on a free localhost port; `with ServeProcess(...) as s: s.url`."""

    def __init__(self, model: str, *extra: str, name: str = "bench", log_path: Path | None = None):
        from sizewise.serve.server import free_port

        self.port = free_port()
        self.name = name
        self.cmd = [sys.executable, "-m", "sizewise.cli", "serve", model, "--port", str(self.port), "--name", name, *extra]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 300.0) -> "ServeProcess":
        from sizewise.serve.server import wait_healthy

        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            wait_healthy(self.proc, self.url, timeout=timeout, poll_s=0.3)
        except RuntimeError as e:
            raise RuntimeError(f"{e} (see {self.log_path})") from None
        return self

    def stop(self) -> int:
        """SIGTERM (drains), wait; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- reading the server back -------------------------------------------------------------------
    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def metric(self, name: str, labels: str | None = None) -> float:
        """Sum of a Prometheus sample (all label sets, or the ones whose label text contains `labels`)."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        total = 0.0
        for line in text.splitlines():
            m = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
            if m and (labels is None or (m.group(1) and labels in m.group(1))):
                total += float(m.group(2))
        return total

    def wait_idle(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.health()["engine"]
            if (st["running"] == 0 and st["waiting"] == 0 and st["kv_blocks_used"] == 0) or time.monotonic() > deadline:
                return st
            time.sleep(0.25)


def rss_bytes(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
