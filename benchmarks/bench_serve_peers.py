"""sizewise's server against vLLM (CPU) and llama.cpp on the same weights: `sizewise bench-serve --peer`.

    .venv/bin/python benchmarks/bench_serve_peers.py            # both workloads at concurrency 1,4,16
    .venv/bin/python benchmarks/bench_serve_peers.py --quick    # story only, concurrency 1
    (or `make bench-peers`, which builds .venv-vllm and .venv-llamacpp once first)

Writes benchmarks/results/bench_serve_peers_story.json and bench_serve_peers_mixed.json (machine, command,
each server's command line and version; skipped peers with their reason). The converted weights and the
server logs stay in /tmp/sizewise-bench-peers, reused by the second workload.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    for workload in ("story",) if quick else ("story", "mixed"):
        cmd = [sys.executable, "-m", "sizewise.cli", "bench-serve", "bundled", "--peer", "vllm,llamacpp",
               "--workload", workload, "--concurrency", "1" if quick else "1,4,16", "--requests", "32",
               "--max-tokens", "64", "--peer-dir", "/tmp/sizewise-bench-peers", "--no-record",
               "--out", str(ROOT / f"benchmarks/results/bench_serve_peers_{workload}.json")]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
