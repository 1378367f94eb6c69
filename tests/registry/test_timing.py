"""Interleaved timing: ordering, intervals, and the load verdicts (fake clock/load for the
deterministic cases, a real competing busy process for the one that must see the machine)."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from sizewise.registry import timing
from sizewise.registry.timing import LoadSample, Task, interleave, judge, paired_ratio


class FakeClock:
    """Time advances only when a task says so, so durations are exactly what the test chose."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeLoad:
    """Samples whose busy time grows by `background` x capacity x elapsed (fake clock) plus ours."""

    def __init__(self, clock: FakeClock, background: float, cpus: int = 2):
        self.clock, self.background, self.cpus = clock, background, cpus
        self.own = 0.0

    def sample(self) -> LoadSample:
        self.own = self.clock.now * 0.9 * self.cpus  # we used 90 % of the CPUs while running
        busy = self.own + self.background * self.cpus * self.clock.now
        return LoadSample(wall=self.clock.now, busy_s=busy, own_s=self.own, cpus=self.cpus, loadavg1=1.0,
                          freq_mhz=2600.0)


def _tasks(clock: FakeClock, a_s: float, b_s: float, jitter: float = 0.0, log: list | None = None, seed: int = 0):
    import random
    rng = random.Random(seed)

    def make(name, dur):
        def run():
            if log is not None:
                log.append(name)
            clock.now += dur * (1 + jitter * rng.uniform(-1, 1))
        return Task(name, run, work=32.0)

    return [make("A", a_s), make("B", b_s)]


def test_rounds_alternate_order_and_warmup_is_discarded():
    clock, log = FakeClock(), []
    res = interleave(_tasks(clock, 1.0, 0.5, log=log), min_rounds=4, max_rounds=4, warmup=1, clock=clock,
                     load=FakeLoad(clock, 0.0))
    assert log[:2] == ["A", "B"]  # the warm-up round ran ...
    assert len(res.times["A"]) == len(res.times["B"]) == 4  # ... and was not recorded
    assert res.order == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    assert res.rate("B") == pytest.approx(64.0)


def test_quiet_run_with_a_real_difference_is_ok_and_stops_early():
    clock = FakeClock()
    res = interleave(_tasks(clock, 1.0, 0.3, jitter=0.01), min_rounds=4, max_rounds=12, clock=clock,
                     load=FakeLoad(clock, background=0.02))
    r = res.ratio("B", "A")
    assert r.lo < 1 / 0.3 < r.hi and r.estimate == pytest.approx(1 / 0.3, rel=0.01)
    v = res.verdict("B", "A")
    assert v.status == "ok", v.reasons
    assert v.cell.startswith("3.3") and "x ±" in v.cell
    assert res.rounds == 4  # tight after the minimum: no more rounds paid for
    assert res.load.background == pytest.approx(0.02, abs=1e-9)


def test_busy_background_is_flagged_even_when_the_interval_is_tight():
    clock = FakeClock()
    res = interleave(_tasks(clock, 1.0, 0.3, jitter=0.01), min_rounds=4, max_rounds=4, clock=clock,
                     load=FakeLoad(clock, background=0.4))
    v = res.verdict("B", "A")
    assert v.status == "busy" and "40 %" in v.reasons[0]
    assert "busy!" in v.cell and "3.3" in v.cell and not v.cell.startswith("3.33x")


def test_wide_spread_is_noisy_and_runs_to_max_rounds():
    clock = FakeClock()
    res = interleave(_tasks(clock, 1.0, 0.3, jitter=0.6), min_rounds=4, max_rounds=8, clock=clock,
                     load=FakeLoad(clock, 0.0))
    assert res.rounds == 8
    v = res.verdict("B", "A")
    assert v.status == "noisy" and "noisy!" in v.cell


def test_no_difference_says_same_instead_of_a_speedup():
    """Equal tasks with 2 % jitter: the 95 % interval should contain 1 in about 95 % of seeds."""
    verdicts = []
    for seed in range(40):
        clock = FakeClock()
        res = interleave(_tasks(clock, 1.0, 1.0, jitter=0.02, seed=seed), min_rounds=6, max_rounds=6, clock=clock,
                         load=FakeLoad(clock, 0.0))
        verdicts.append(res.verdict("B", "A"))
    same = [v for v in verdicts if v.status == "same"]
    assert len(same) >= 34, [v.status for v in verdicts]
    assert all(v.cell.startswith("≈1 (") for v in same)
    assert all(v.status in ("same", "ok") for v in verdicts)


def test_paired_ratio_interval_uses_t_quantiles():
    r = paired_ratio("B", "A", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert r.estimate == pytest.approx(2.0) and r.lo == pytest.approx(2.0) and r.n == 3
    r = paired_ratio("B", "A", [1.0, 1.0], [math.e, math.e ** 3])  # logs 1 and 3: mean 2, sd sqrt(2)
    half = 12.706 * math.sqrt(2) / math.sqrt(2)
    assert r.lo == pytest.approx(math.exp(2 - half)) and r.hi == pytest.approx(math.exp(2 + half))
    assert judge(paired_ratio("B", "A", [1.0], [2.0]), None).status == "noisy"


def test_a_competing_busy_process_is_seen_by_the_real_load_source():
    """Two spinning processes (one per core, bounded at 20 s) compete with a pure-Python task pair:
    the system load source attributes their CPU time to others, and the verdict says busy."""
    spin = "import time\nt = time.time() + 20\nwhile time.time() < t: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        time.sleep(0.3)  # let them start spinning

        def work(n):
            return lambda: sum(i * i for i in range(n))

        res = interleave([Task("A", work(60_000)), Task("B", work(30_000))], min_rounds=4, max_rounds=4)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert res.load.background is not None and res.load.background > timing.MAX_BACKGROUND
    assert res.verdict("B", "A").status == "busy"
    assert res.load.wall_s > 0 and res.load.cpus >= 1
