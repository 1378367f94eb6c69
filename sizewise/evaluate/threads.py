"""How many intra-op threads to use: the cores other processes leave free, re-checked while running.

Why: torch's parallel regions (OpenMP, static chunks, a barrier at the end) run only as fast as
their slowest thread. When another CPU-bound process holds one of two cores, the thread that shares
a core with it is descheduled for whole time slices and every barrier waits for it: batch-1 decode of
the bundled model fell from 61 to 11 tok/s with 2 threads and one competing spinner, while 1 thread
kept 43 (measured on the 2-core EPYC this project runs on). llama.cpp users pick `-t` by hand; we
measure. Other processes' CPU use is read from /proc/stat (all CPUs' busy time) minus this
process's own CPU time over a short interval, so our own threads never count as "busy".

`SIZEWISE_THREADS=N` (or `--threads N` where a verb has it) fixes the count and turns the
governor off: a measurement that must be reproducible can pin it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from sizewise.evaluate.machine import cores, proc_stat_busy

# A core counts as taken when other processes use more than this much of it beyond the cores
# already counted (and is given back when they drop this far below): 0.4 rather than 0.5 because
# a competitor that shares a core with our spinning team gets only ~2/3 of a core, and the
# hysteresis keeps a fluctuating background from flapping the team size every period.
MARGIN = 0.4
PERIOD_S = 1.0
SAMPLE_S = 0.2


def env_threads() -> int | None:
    """SIZEWISE_THREADS as a positive int, None when unset; a bad value is an error, not ignored."""
    v = os.environ.get("SIZEWISE_THREADS", "").strip()
    if not v:
        return None
    if not v.isdigit() or int(v) < 1:
        from sizewise.errors import SizewiseError

        raise SizewiseError(f"SIZEWISE_THREADS must be a positive integer (got {v!r}); unset it to let sizewise choose")
    return int(v)


def _busy_and_own() -> tuple[float | None, float]:
    """(all CPUs' busy seconds since boot or None, this process's CPU seconds): two cheap reads."""
    st = proc_stat_busy()
    return (st[0] if st else None), time.process_time()


def _others(before: tuple[float | None, float], after: tuple[float | None, float], dt: float) -> float | None:
    """Cores' worth of CPU that processes other than this one used between two `_busy_and_own` readings."""
    if before[0] is None or after[0] is None or dt <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / dt)


def others_busy_cores(interval_s: float = SAMPLE_S) -> float | None:
    """Cores' worth of CPU other processes used over the next `interval_s` (None where unreadable)."""
    before, t0 = _busy_and_own(), time.monotonic()
    time.sleep(interval_s)
    return _others(before, _busy_and_own(), time.monotonic() - t0)


def taken_cores(others: float, previous: int, n_cores: int) -> int:
    """Whole cores to leave to other processes, with hysteresis around `previous`."""
    if others > previous + MARGIN or others < previous - MARGIN:
        previous = int(math.floor(others + 1.0 - MARGIN)) if others > previous else int(math.ceil(others - 1.0 + MARGIN))
    return min(max(previous, 0), n_cores - 1)


def free_core_threads(interval_s: float = SAMPLE_S) -> int:
    """Threads for a run starting now: the cores free of other processes (at least 1)."""
    fixed = env_threads()
    if fixed is not None:
        return fixed
    n = cores()
    others = others_busy_cores(interval_s)
    if others is None:
        return n
    return n - taken_cores(others, 0, n)


@dataclass
class ThreadGovernor:
    """Re-chooses the intra-op thread count every `period_s` from what other processes use.

    Call `tick()` from the thread that runs torch (the engine loop) between steps; it is a few
    /proc reads once a period and nothing otherwise. `fixed` (SIZEWISE_THREADS, --threads)
    disables it. `changes` counts team-size changes (exported as a metric)."""

    n_cores: int = field(default_factory=cores)
    fixed: int | None = None
    period_s: float = PERIOD_S
    threads: int = 0
    taken: int = 0
    others: float | None = None
    changes: int = 0
    _last: tuple[float, float | None, float] | None = None

    def __post_init__(self) -> None:
        if self.fixed is None:
            self.fixed = env_threads()
        if not self.threads:
            self.threads = self.fixed or self.n_cores
        self.threads = min(max(self.threads, 1), max(self.n_cores, self.fixed or 1))
        self.taken = max(self.n_cores - self.threads, 0)

    def apply(self) -> int:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.threads

    def tick(self, now: float | None = None) -> int:
        """Sample (once a period) and resize the team when the free cores changed; returns the count."""
        if self.fixed is not None:
            return self.threads
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last[0] < self.period_s:
            return self.threads
        reading = _busy_and_own()
        prev, self._last = self._last, (now, *reading)
        others = None if prev is None else _others(prev[1:], reading, now - prev[0])
        return self.threads if others is None else self.observe(others)

    def observe(self, others: float) -> int:
        """Feed one reading of other processes' busy cores; resize when the decision changes."""
        self.others = others
        taken = taken_cores(others, self.taken, self.n_cores)
        if taken != self.taken:
            self.taken = taken
            self.threads = self.n_cores - taken
            self.changes += 1
            self.apply()
        return self.threads
