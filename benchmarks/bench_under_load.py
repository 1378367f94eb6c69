"""Speed on a machine that is not idle: quiet vs one competing CPU-bound process, in the same run.

Issue 17: with one single-threaded spinner on 2 cores, sizewise's batch-1 decode and `serve` c1
throughput collapsed (11 % of quiet) while llama.cpp kept 93 %. This benchmark starts the
competitor itself and measures, in interleaved rounds (quiet/loaded order alternating):

  decode  batch-1 greedy decode of MODEL+RECIPE in this process (the lean decoder `eval`/`study`
          time), with torch threads = all cores (the old policy) and with the free-core policy
          (evaluate/threads.py, the default now), and with 1 thread fixed (quiet vs loaded: what a
          thread with a core of its own loses to the competitor on the other core, which no thread
          count recovers); llama.cpp on the bundled GGUF at n_threads = cores (what its users pass)
          as the peer; and a plain streaming read of as many bytes as the weights (the kernels'
          `stream_read`, default threads) as the memory ceiling: decode streams every weight once per
          token, so what one core reads against what all read bounds what decode can keep.
  serve   c1 tokens/s of two `sizewise serve` processes: one with SIZEWISE_THREADS=cores (fixed
          team), one with the default governor that resizes the team while running.

Prints retained = loaded / quiet (median over rounds, with the per-round range) and writes
benchmarks/results/under_load.json.

    python benchmarks/bench_under_load.py [--recipe int4-g64] [--rounds 3] [--no-serve]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


class Competitor:
    """One single-threaded CPU-bound process (a Python spin loop), as in the issue."""

    def __init__(self, settle_s: float):
        self.settle_s = settle_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SPIN.format(s=3600)])
        time.sleep(self.settle_s)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        time.sleep(0.5)


def _llamacpp_decoder(threads: int):
    try:
        import llama_cpp
    except ImportError as e:
        print(f"llama.cpp peer skipped: {e}")
        return None
    from sizewise.io.bundled import bundled_gguf_path

    llm = llama_cpp.Llama(str(bundled_gguf_path()), n_threads=threads, n_ctx=512, verbose=False)
    prompt = llm.tokenize(b"Write a short story about the number 7.")

    def decode(steps: int, runs: int = 3) -> float:
        rates = []
        for _ in range(runs):
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(steps):
                llm.eval([llm.sample(temp=0)])
            rates.append(steps / (time.perf_counter() - t0))
        return statistics.median(rates)

    decode(4, 1)  # warm-up
    return decode


def _summ(quiet: list[float], loaded: list[float]) -> dict:
    ratios = [b / a for a, b in zip(quiet, loaded) if a > 0]
    return {"quiet_tok_s": quiet, "loaded_tok_s": loaded, "quiet_median": statistics.median(quiet),
            "loaded_median": statistics.median(loaded), "retained": statistics.median(ratios),
            "retained_range": [min(ratios), max(ratios)]}


READ_ROW = "plain read of the weights' bytes, default threads (memory ceiling)"


def _read_probe(model):
    """A timer for one plain streaming read of as many bytes as the model's weights (GB/s, median of 5).

    Batch-1 decode streams every weight once per token, so it can keep under load at most about what a
    plain read keeps: with one core taken, the default runs one thread, and one core of this machine reads
    less than two. Measured in the same rounds as the decode rows, it is the ceiling beside them."""
    import torch

    from sizewise import kernels
    from sizewise.study import resident_bytes

    ops = kernels.ops()
    if ops is None:
        print(f"memory-ceiling row skipped: sizewise's kernels are not built ({kernels.why_not()})")
        return None
    buf = torch.ones(resident_bytes(model) // 8 + 1, dtype=torch.int64)  # written once, so every page is backed

    def rate() -> float:
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            ops.stream_read(buf)
            ts.append(time.perf_counter() - t0)
        return buf.numel() * 8 / statistics.median(ts) / 1e9

    rate()
    return rate


def bench_decode(lm, model: str, rounds: int, steps: int) -> tuple[dict, dict]:
    import torch

    from sizewise.evaluate.data import eval_tokens
    from sizewise.evaluate.machine import cores
    from sizewise.evaluate.speed import decode_speed
    from sizewise.evaluate.threads import free_core_threads

    n = cores()
    toks = eval_tokens(lm.tokenizer, 256)
    lcpp = _llamacpp_decoder(n) if model == "bundled" else None
    rows = {"sizewise threads=cores (old)": ([], []), "sizewise free-core threads (default)": ([], [])}
    if n > 1:  # the rate a thread with a core to itself gets, quiet and beside the competitor: what the
        rows["sizewise threads=1 (fixed)"] = ([], [])  # default's loaded rate is made of, and what it loses
    if lcpp:
        rows[f"llama.cpp n_threads={n}"] = ([], [])
    probe = _read_probe(lm.model)
    if probe:
        rows[READ_ROW] = ([], [])
    chosen = {"quiet": [], "loaded": []}
    os.environ.pop("SIZEWISE_THREADS", None)

    def measure(slot: int, cond: str) -> None:
        for name, (q, l) in rows.items():
            if name.startswith("llama.cpp"):
                rate = lcpp(steps)
            elif name == READ_ROW:
                torch.set_num_threads(free_core_threads())
                rate = probe()
            else:
                t = n if "old" in name else 1 if "threads=1" in name else free_core_threads()
                if "default" in name:
                    chosen[cond].append(t)
                torch.set_num_threads(t)
                rate, _ = decode_speed(lm.model, toks, 1, steps=steps, runs=3)
            (q if slot == 0 else l).append(rate)
            print(f"  {cond:6s} {name:40s} {rate:7.1f} {'GB/s' if name == READ_ROW else 'tok/s'}", flush=True)

    for r in range(rounds):
        order = ["quiet", "loaded"] if r % 2 == 0 else ["loaded", "quiet"]
        for cond in order:
            if cond == "loaded":
                with Competitor(1.0):
                    measure(1, cond)
            else:
                measure(0, cond)
    torch.set_num_threads(n)
    out = {k: _summ(q, l) for k, (q, l) in rows.items()}
    for k, v in out.items():
        v["unit"] = "GB/s" if k == READ_ROW else "tok/s"  # the *_tok_s keys of the read row hold GB/s
    return out, chosen


def bench_serve(tok, model: str, recipe: str | None, rounds: int, requests: int, max_tokens: int) -> dict:
    from benchmarks.serve_harness import ServeProcess
    from sizewise.evaluate.machine import cores
    from sizewise.serve.loadgen import mixed_workload, run_load_subprocess, summarize

    extra = ["--recipe", recipe] if recipe else []
    servers = {}
    old_env = os.environ.get("SIZEWISE_THREADS")
    try:
        os.environ["SIZEWISE_THREADS"] = str(cores())
        servers["serve SIZEWISE_THREADS=cores (old)"] = ServeProcess(model, *extra, name="fixed").start()
        os.environ.pop("SIZEWISE_THREADS")
        servers["serve free-core governor (default)"] = ServeProcess(model, *extra, name="auto").start()
    finally:
        if old_env is not None:
            os.environ["SIZEWISE_THREADS"] = old_env
    try:
        reqs = mixed_workload(tok, requests, max_tokens, seed=0)
        reqs = [type(r)(r.prompt_ids, max_tokens) for r in reqs]  # every request to max_tokens: same work each time
        rows = {k: ([], []) for k in servers}
        threads_seen = {k: [] for k in servers}

        def measure(slot: int, cond: str) -> None:
            for name, srv in servers.items():
                res, wall = run_load_subprocess(srv.url, srv.name, reqs, 1)
                s = summarize(res, wall)
                (rows[name][0] if slot == 0 else rows[name][1]).append(s["tokens_per_s"])
                threads_seen[name].append((cond, srv.metric("sizewise_engine_threads")))
                print(f"  {cond:6s} {name:40s} {s['tokens_per_s']:7.1f} tok/s  (ok {s['completed_ok']}/{len(reqs)}, "
                      f"threads {threads_seen[name][-1][1]:.0f})", flush=True)

        run_load_subprocess(servers[next(iter(servers))].url, "fixed", reqs[:1], 1)  # warm-up
        run_load_subprocess(servers["serve free-core governor (default)"].url, "auto", reqs[:1], 1)
        for r in range(rounds):
            order = ["quiet", "loaded"] if r % 2 == 0 else ["loaded", "quiet"]
            for cond in order:
                if cond == "loaded":
                    with Competitor(2.5):  # the governor samples once a second
                        measure(1, cond)
                else:
                    time.sleep(2.0)
                    measure(0, cond)
        out = {k: _summ(q, l) for k, (q, l) in rows.items()}
        for k in out:
            out[k]["engine_threads"] = threads_seen[k]
            out[k]["thread_changes"] = servers[k].metric("sizewise_engine_thread_changes_total")
        return out
    finally:
        for s in servers.values():
            s.stop()


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from sizewise.commands.serve import _load
    from sizewise.evaluate.machine import command_line, machine_info
    from sizewise.io.atomic import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--recipe", default="int4-g64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "under_load.json"))
    a = ap.parse_args()

    print(f"decode at batch 1, {a.rounds} rounds (quiet/loaded interleaved)")
    lm = _load(a.model, "fp32", a.recipe)  # timed here; its tokenizer builds the serve load
    dec, chosen = bench_decode(lm, a.model, a.rounds, a.steps)
    srv = {}
    if not a.no_serve:
        print("serve at concurrency 1")
        srv = bench_serve(lm.tokenizer, a.model, a.recipe, a.rounds, a.requests, a.max_tokens)
    t = Table(title=f"quiet vs one competing single-threaded process ({a.model} {a.recipe})")
    for c in ("what", "quiet", "loaded", "retained", "per-round range"):
        t.add_column(c, justify="left" if c == "what" else "right")
    for name, s in {**dec, **srv}.items():
        unit = "GB/s" if name == READ_ROW else "tok/s"
        t.add_row(name, f"{s['quiet_median']:.1f} {unit}", f"{s['loaded_median']:.1f} {unit}", f"{100 * s['retained']:.0f} %",
                  f"{100 * s['retained_range'][0]:.0f}-{100 * s['retained_range'][1]:.0f} %")
    Console(width=140).print(t)
    print(f"free-core policy chose threads: quiet {chosen['quiet']}, loaded {chosen['loaded']}")
    res = {"benchmark": "under_load", "command": command_line(), "machine": machine_info(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": a.model, "recipe": a.recipe,
           "rounds": a.rounds, "competitor": "one python spin loop (single-threaded, CPU-bound)",
           "decode_b1": dec, "decode_threads_chosen": chosen, "serve_c1": srv,
           "serve_workload": {"requests": a.requests, "max_tokens": a.max_tokens}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, res)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
