"""Serving benchmark: `sizewise bench-serve` with the issue's settings, fp32 and int8 weight-only.

    .venv/bin/python benchmarks/bench_serve.py            # full run (bundled model; ~15-30 min on 2 quiet cores)
    .venv/bin/python benchmarks/bench_serve.py --quick    # a smoke run

Writes benchmarks/results/bench_serve_fp32.json, bench_serve_int8-wo.json (and a soak section in the fp32 one).
Each JSON carries the machine, the command and the baselines measured in the same run.
"""
from __future__ import annotations

import sys

from sizewise.commands.serve import bench_serve_command


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    for recipe in (None, "int8-wo"):
        tag = recipe or "fp32"
        bench_serve_command(
            model="bundled", requests=8 if quick else 32, concurrency=[1, 4] if quick else [1, 4, 16, 32],
            max_tokens=8 if quick else 64, kv_memory="1GiB", max_batch=64, block_size=16, dtype="fp32", recipe=recipe,
            static_batch=4 if quick else 16, baselines=True, soak_requests=(50 if quick else 1000) if recipe is None else 0,
            soak_model=None, duration_s=1800, out=f"benchmarks/results/bench_serve_{tag}.json", seed=0)


if __name__ == "__main__":
    main(sys.argv[1:])
