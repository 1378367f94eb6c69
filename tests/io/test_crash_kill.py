"""Issue 16: every command that writes a checkpoint, SIGKILLed after a random delay, leaves no output or
a complete one (never a half-written one, never a lost old one), never touches its input, and the
next successful run leaves no temp siblings.

One table row per command (crash_harness.commands(): compress streamed and in memory, prune, share,
export --to gguf|vllm|onnx; an export row is skipped, with its reason, until its module exists).
Each row: a warm-up run, one unkilled run to measure its duration d, then KILLS runs killed at seeded uniform
delays in [0, 1.2 d], half of them onto an existing output (--force replace), then one full run.
The children are forked from a helper that has already imported torch/transformers/sizewise
(crash_harness.ForkRunner), so the delays fall on the command's own work, not on 3-5 s of imports
(a literal `python -m sizewise.cli` per kill, ExecRunner, costs 5-15 s a run on a loaded 2-core
machine: the benchmark does those). The long version: benchmarks/bench_crash_kill.py.
"""
from __future__ import annotations

import random

import pytest

import crash_harness as H

KILLS = 8  # per row: 4 rows x 8 = 32 runs given a random delay (~1 in 6 finishes before it): >= 20 SIGKILLs
SEED = 16


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return H.make_model_dir(tmp_path_factory.mktemp("crash-src") / "model")


@pytest.fixture(scope="module")
def runner():
    r = H.ForkRunner()
    yield r
    r.close()


def _assert_clean(res: dict) -> None:
    bad = [t for t in res["trials"] if t["outcome"] in ("half-written", "run-failed")]
    assert res["outcomes"]["half-written"] == 0, bad
    assert res["outcomes"]["run-failed"] == 0, bad
    assert res["old_output_lost"] == 0, [t for t in res["trials"] if t["replace"] and t["outcome"] == "absent"]
    assert res["input_changed"] == 0
    # cleaned as it goes: a run cleans its killed predecessors' temps before it writes its own
    assert res["max_temp_siblings_after_a_kill"] <= 2, res["trials"]
    assert res["final_run_rc"] == 0 and res["final_complete"]
    assert res["temp_siblings_after_next_run"] == 0, res["temp_siblings_left"]


@pytest.mark.parametrize("cmd", H.commands(), ids=lambda c: c.name)
def test_sigkill_leaves_absent_or_complete(cmd, src, runner, tmp_path):
    why = H.unavailable(cmd)
    if why:
        print(f"{cmd.name}: skipped: {why}")
        pytest.skip(why)
    rng = random.Random(f"{SEED}-{cmd.name}")
    res = H.campaign(cmd, src, tmp_path / cmd.name, KILLS, rng, runner, log=print)
    print({k: v for k, v in res.items() if k != "trials"})
    _assert_clean(res)
    assert res["killed"] >= 3, "most runs must really be killed, or this tests nothing"
    seen = {t["outcome"] for t in res["trials"] if t["killed"]}
    assert "absent" in seen or "complete-old" in seen, "some kills must land before the output is published"

