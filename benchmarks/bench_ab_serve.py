"""A short A/B of two variants behind one `sizewise serve --ab` process, driven by the loadgen.

    .venv/bin/python benchmarks/bench_ab_serve.py [--model bundled] [--variant bundled:int8-wo=0.5]
        [--requests 40] [--max-tokens 32] [--concurrency 4] [--seed 0]

Starts the real CLI (so the memory check, the registry record on SIGTERM and the labelled /metrics
are the shipped ones), sends a mixed workload without `user` (seeded random split), reads /v1/ab,
stops the server with SIGTERM and reads back the registry's serve-ab runs. Writes
benchmarks/results/ab_serve.json. Both variants share the machine's cores, so each one's speed
is measured under the other's load: compare them with each other, not with bench-serve numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--variant", default="bundled:int8-wo=0.5")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-memory", default="256MiB")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ab_serve.json"))
    a = ap.parse_args()

    from sizewise.evaluate.machine import command_line, machine_info
    from sizewise.io.model_load import load_model
    from sizewise.registry import Registry
    from sizewise.serve.loadgen import mixed_workload, run_load_subprocess, summarize
    from sizewise.serve.server import free_port

    reg = str(Path(tempfile.mkdtemp()) / "registry.sqlite")
    port = free_port()
    cmd = [sys.executable, "-m", "sizewise.cli", "serve", a.model, "--ab", a.variant, "--ab-seed", str(a.seed),
           "--port", str(port), "--kv-memory", a.kv_memory, "--registry", reg]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(proc.stderr.read())
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    startup_s = time.monotonic() - t0
    tok = load_model(a.model).tokenizer if a.model == "bundled" else None
    reqs = mixed_workload(tok, a.requests, a.max_tokens, seed=a.seed)
    served = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    results, wall = run_load_subprocess(url, served, reqs, a.concurrency)
    ab = httpx.get(url + "/v1/ab").json()
    metrics = httpx.get(url + "/metrics").text
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    with Registry.open(reg) as r:
        recorded = []
        for v in ab["variants"]:
            mid = r.identify(v["source"]).id
            # variants of one source (in-memory recipes) share its model id: their runs differ by protocol.ab.variant
            runs = [x for x in r.runs(mid) if x["verb"] == "serve-ab" and x["extra"]["ab"]["this"] == v["name"]]
            ids = {x["id"] for x in runs}
            recorded.append({"variant": v["name"], "model_id": mid, "runs": len(runs),
                             "metrics": {m["name"]: m["value"] for m in r.metrics(mid) if m["run"] in ids}})
    out = {"benchmark": "ab_serve", "command": command_line(), "server_command": " ".join(cmd[2:]),
           "machine": machine_info(), "startup_s": round(startup_s, 1), "exit_code": proc.returncode,
           "client": summarize(results, wall), "ab": ab, "registry": recorded,
           "labelled_series": sum(1 for ln in metrics.splitlines() if 'variant="' in ln and not ln.startswith("#")),
           "server_log_tail": err.strip().splitlines()[-4:]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for v in ab["variants"]:
        print(f"{v['name']:>18}: share {v['share']:.2f} observed {v['observed_share']}, {v['requests']} req, "
              f"{v['errors']} err, latency p50/p95 {v['latency_s']['p50']}/{v['latency_s']['p95']} s, "
              f"TTFT p50/p95 {v['ttft_s']['p50']}/{v['ttft_s']['p95']} s, {v['tokens_per_s']} tok/s, "
              f"decode {v['decode_tokens_per_s']} tok/s/seq")
    print(f"server exit {proc.returncode}; registry: {[(x['variant'], x['runs']) for x in recorded]}; wrote {a.out}")


if __name__ == "__main__":
    main()
