"""`sizewise serve` as a process: start-up line, a live request, SIGTERM drains and exits 0; bad input exits 2."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import torch

from sizewise.serve.server import free_port, wait_healthy

from . import tiny


def _cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sizewise.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_serve_process_drains_on_sigterm(tmp_path):
    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=1024)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    port = free_port()
    proc = _cli("serve", str(tmp_path / "m"), "--port", str(port), "--kv-memory", "2MiB", "--block-size", "8")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=90)
        got = {}

        def stream():
            with httpx.stream("POST", url + "/v1/completions", timeout=60,
                              json={"model": "m", "prompt": "hi", "max_tokens": 600, "stream": True, "ignore_eos": True}) as r:
                lines = [l for l in r.iter_lines() if l.startswith("data: ")]
            got["done"] = lines[-1] == "data: [DONE]"
            got["usage"] = json.loads(lines[-2][6:])["usage"]

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 30
        # long enough (600 tokens) that SIGTERM lands mid-request even on a fast, quiet machine
        while "sizewise_requests_running 1.0" not in httpx.get(url + "/metrics").text:
            assert t.is_alive(), "the request finished before SIGTERM could be sent"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=60)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 0, err
    assert got.get("done") and got["usage"]["completion_tokens"] == 600  # the running request finished
    start = next(l for l in err.splitlines() if "KV pool" in l)
    blocks = int(start.split("KV pool ")[1].split(" blocks")[0])
    per_token = int(start.split("layout, ")[1].split(" B/token")[0])
    assert blocks == (2 * 2**20) // (8 * per_token) and "MiB" in start and "MB" in start
    assert "request 1 length prompt=2 completion=600" in err and "stopped" in err


def test_serve_bad_input_exits_2(tmp_path):
    from typer.testing import CliRunner

    from sizewise.cli import app

    runner = CliRunner()
    for args, msg in ((["serve", str(tmp_path / "missing")], "model not found"),
                      (["serve", "bundled", "--kv-memory", "lots"], "cannot read size 'lots'"),
                      (["serve", "bundled", "--max-batch", "0"], "--max-batch"),
                      (["bench-serve", "bundled", "--concurrency", "1,x"], "--concurrency")):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output


def test_bench_serve_end_to_end_on_a_tiny_model(tmp_path):
    """bench-serve's whole job (engine loop on this thread, HTTP load in a helper, baselines, soak) on a tiny model."""
    from sizewise.commands.serve import bench_serve_command

    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=1024)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    r = bench_serve_command(model=str(tmp_path / "m"), requests=4, concurrency=[1, 2], max_tokens=3, kv_memory="4MiB",
                            max_batch=8, block_size=8, dtype="fp32", recipe=None, static_batch=2, baselines=True,
                            soak_requests=12, soak_model=None, duration_s=120, out=str(tmp_path / "b.json"), seed=0)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["serve"] == r["serve"] and [s["concurrency"] for s in r["serve"]] == [1, 2]
    for s in r["serve"]:
        assert s["completed_ok"] == 4 and s["output_tokens"] == sum(r["workload"]["output_tokens"])
        assert s["throughput_vs_sequential"] > 0
    assert r["baseline_sequential"]["output_tokens"] == sum(r["workload"]["output_tokens"])
    assert 0 < r["kv_peak_vs_static"] < 1
    soak = r["soak"]
    assert soak["leaked_blocks"] == 0 and soak["errored_requests"] == 0 and soak["health_status"] == 200
    assert soak["answers_after"] and soak["requests"] == 12
