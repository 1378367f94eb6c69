"""Where a serving run's time goes: the engine stepped in-process (no HTTP, no client process) on
bench-serve's mixed workload, every forward timed and split into steps with prefill and pure decode
steps; sequential `generate()` on the same requests is the baseline in the same run.

    .venv/bin/python benchmarks/serve_step_profile.py [--requests 16] [--max-tokens 64]

Writes benchmarks/results/serve_step_profile.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_step_profile.json"))
    a = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from sizewise.evaluate.machine import command_line, machine_info
    from sizewise.io.atomic import atomic_write_json
    from sizewise.io.model_load import load_model
    from sizewise.serve.bench import baseline_sequential
    from sizewise.serve.engine import Engine, EngineConfig
    from sizewise.serve.loadgen import mixed_workload
    from sizewise.serve.sampling import SamplingParams

    torch.set_num_threads(a.threads)
    lm = load_model("bundled")
    reqs = mixed_workload(lm.tokenizer, a.requests, a.max_tokens, seed=0)
    eng = Engine(lm.model.eval(), lm.tokenizer, EngineConfig(kv_memory_bytes=1 << 30, max_batch=64))
    forward, log = eng.runner.forward, []

    def timed(batch):
        t = time.perf_counter()
        out = forward(batch)
        log.append({"prefill_tokens": sum(len(s.tokens) for s in batch if len(s.tokens) > 1),
                    "decode_rows": sum(1 for s in batch if len(s.tokens) == 1), "seconds": time.perf_counter() - t})
        return out

    eng.runner.forward = timed

    def run() -> float:
        log.clear()
        for r in reqs:
            eng.submit(r.prompt_ids, SamplingParams(max_tokens=r.max_tokens, temperature=0, ignore_eos=True))
        eng._drain_inbox()
        t = time.perf_counter()
        while eng.scheduler.running or eng.scheduler.waiting:
            eng.step()
            eng._drain_inbox()
        return time.perf_counter() - t

    run()  # warm-up
    wall = run()
    out_tokens = sum(r.max_tokens for r in reqs)
    seq = baseline_sequential(lm.model, reqs)
    pf = [x for x in log if x["prefill_tokens"]]
    dec = [x for x in log if not x["prefill_tokens"]]
    res = {"benchmark": "serve_step_profile", "requests": a.requests, "max_tokens": a.max_tokens,
           "prompt_tokens": sum(len(r.prompt_ids) for r in reqs), "output_tokens": out_tokens,
           "engine_wall_s": wall, "engine_tok_s": out_tokens / wall, "sequential": seq,
           "ratio_vs_sequential": (out_tokens / wall) / seq["tokens_per_s"],
           "prefill_steps": len(pf), "prefill_steps_s": sum(x["seconds"] for x in pf),
           "decode_steps": len(dec), "decode_steps_s": sum(x["seconds"] for x in dec),
           "decode_step_ms_at_full_batch": 1e3 * min((x["seconds"] for x in dec if x["decode_rows"] == max(
               d["decode_rows"] for d in dec)), default=0.0) if dec else None,
           "steps": log, "machine": machine_info(), "command": command_line()}
    atomic_write_json(Path(a.out), res)
    t = Table(title=f"engine in-process, {a.requests} requests")
    for c in ("", "value"):
        t.add_column(c)
    for k in ("engine_tok_s", "ratio_vs_sequential", "prefill_steps_s", "decode_steps_s", "decode_step_ms_at_full_batch"):
        t.add_row(k, f"{res[k]:.2f}")
    t.add_row("sequential generate() tok/s", f"{seq['tokens_per_s']:.2f}")
    Console().print(t)
    print(json.dumps({k: res[k] for k in ("engine_wall_s", "prefill_steps_s", "decode_steps_s")}))


if __name__ == "__main__":
    main()
