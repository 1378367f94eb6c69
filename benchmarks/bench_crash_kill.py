"""Crash consistency under SIGKILL (issue 16), the long version of tests/io/test_crash_kill.py.

Every command that writes a checkpoint (compress streamed and in memory, prune, share; export rows
once sizewise/export/<target>.py exist) is run, killed with SIGKILL after a seeded uniform delay in
[0, 1.2 x one measured run], and what it left is judged: absent, complete (old or new), or
half-written; the input tree is hashed after every kill, and after a final full run no temp sibling
may remain. Runs are forked from a pre-imported helper (tests/io/crash_harness.py: ForkRunner); an
extra row kills the literal `python -m sizewise.cli compress ...` (ExecRunner, imports included),
and one row repeats the streamed compress with renameat2 exchange disabled (the two-rename fallback).

Run: .venv/bin/python benchmarks/bench_crash_kill.py [--kills 100] [--hidden 512 --layers 8] [--exec-kills 6]
  -> benchmarks/results/crash_kill.json
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "io"))
sys.path.insert(0, str(ROOT))

import crash_harness as H  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100, help="randomly delayed runs over the fork-runner rows, in total")
    ap.add_argument("--exec-kills", type=int, default=6, help="randomly delayed `python -m sizewise.cli` runs")
    ap.add_argument("--fallback-kills", type=int, default=12, help="streamed compress with RENAME_EXCHANGE disabled")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crash_kill.json"))
    a = ap.parse_args()

    from sizewise.evaluate.machine import machine_info
    from sizewise.io.atomic import atomic_write_json, scratch_dir

    t_start = time.perf_counter()
    work = scratch_dir("sizewise-crash-kill")
    rows, skipped = [], {}
    try:
        src = H.make_model_dir(work / "src", hidden=a.hidden, inter=a.inter, layers=a.layers, shard="8MB")
        src_bytes = sum(f.stat().st_size for f in src.iterdir() if f.is_file())
        cmds = [c for c in H.commands() if not (why := H.unavailable(c)) or skipped.setdefault(c.name, why) is None]
        per_row = -(-a.kills // len(cmds))
        fork = H.ForkRunner()
        try:
            for c in cmds:
                rows.append({"runner": "fork", **H.campaign(c, src, work / c.name, per_row,
                                                            random.Random(f"{a.seed}-{c.name}"), fork, log=print)})
        finally:
            fork.close()
        stream = next(c for c in H.commands() if c.name == "compress-stream")
        if a.fallback_kills:
            fb = H.ForkRunner(env={"SIZEWISE_NO_RENAME_EXCHANGE": "1"})
            try:
                res = H.campaign(stream, src, work / "fallback", a.fallback_kills,
                                 random.Random(f"{a.seed}-fallback"), fb, log=print)
                rows.append({"runner": "fork, SIZEWISE_NO_RENAME_EXCHANGE=1 (two renames)", **res,
                             "command": "compress-stream-fallback"})
            finally:
                fb.close()
        if a.exec_kills:
            res = H.campaign(stream, src, work / "exec", a.exec_kills, random.Random(f"{a.seed}-exec"),
                             H.ExecRunner(), log=print)
            rows.append({"runner": "exec: python -m sizewise.cli", **res, "command": "compress-stream-exec"})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    keys = ("absent", "complete-new", "complete-old", "half-written", "run-failed")
    totals = {
        "runs": sum(r["runs"] for r in rows), "sigkills": sum(r["killed"] for r in rows),
        "finished_before_kill": sum(r["finished_before_kill"] for r in rows),
        "outcomes": {k: sum(r["outcomes"][k] for r in rows) for k in keys},
        "half_written": sum(r["outcomes"]["half-written"] for r in rows),
        "old_output_lost": sum(r["old_output_lost"] for r in rows),
        "restored_by_recover": sum(r["restored_by_recover"] for r in rows),
        "input_changed": sum(r["input_changed"] for r in rows),
        "max_temp_siblings_after_a_kill": max(r["max_temp_siblings_after_a_kill"] for r in rows),
        "stale_temps_after_next_run": sum(r["temp_siblings_after_next_run"] for r in rows),
    }
    result = {
        "benchmark": "crash_kill: SIGKILL at random delays in [0, 1.2 x run], judged after each kill",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": {"hidden": a.hidden, "intermediate": a.inter, "layers": a.layers, "vocab": 128, "dtype": "bf16",
                  "input_bytes": src_bytes},
        "seed": a.seed, "stream_shard_bytes": int(H.child_env()["SIZEWISE_STREAM_SHARD_BYTES"]),
        "totals": totals, "skipped_rows": skipped,
        "rows": [{k: v for k, v in r.items()} for r in rows],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(a.out, result)
    print({k: v for k, v in totals.items()})
    print(f"skipped: {skipped}")
    print(f"wrote {a.out}")
    ok = totals["half_written"] == 0 and totals["old_output_lost"] == 0 and totals["input_changed"] == 0 \
        and totals["stale_temps_after_next_run"] == 0 and totals["outcomes"]["run-failed"] == 0
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
