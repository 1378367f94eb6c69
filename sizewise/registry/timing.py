"""Interleaved timing: A and B measured in turns (AB, BA, AB, ...) in one process, with the
machine's load recorded beside the result and a verdict on whether the ratio can be trusted.

Why: timing A for a minute and then B for a minute measures A and B under two different
machines whenever something else starts or stops in between. On a shared 2-core box a quick
study once printed int4-g64 decode at 0.35x fp32 (a quiet rerun: 3.4x) and nothing in the table
said so. Interleaving puts A and B under the same conditions round by round, so each round
gives one *paired* ratio; the spread of those ratios gives a confidence interval; and the CPU
time other processes used during the run (system busy time from /proc/stat minus this
process's own CPU time) says whether the conditions were the ones a user would reproduce.
A ratio whose interval is wide, or that was taken while others used the cores, is reported as
such (`Verdict.cell`), never as a bare number.

Pure Python (no torch): the clock and the load source are parameters, so tests drive them
with fakes and get deterministic verdicts.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol, Sequence

from sizewise.evaluate.machine import proc_stat_busy

# A ratio is trusted when its 95 % interval is within +-MAX_REL_HALF_WIDTH of the estimate and
# other processes used at most MAX_BACKGROUND of the machine's CPU capacity during the run.
MAX_REL_HALF_WIDTH = 0.10
MAX_BACKGROUND = 0.10
# Adaptive rounds stop once every ratio's interval is this tight (and min_rounds are done).
TARGET_REL_HALF_WIDTH = 0.04

# Two-sided 95 % Student t quantiles by degrees of freedom (no scipy in the dependencies).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """Two-sided 95 % t quantile; between tabulated df the next smaller df (conservative)."""
    if df < 1:
        return math.inf
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


# --- the machine's load ----------------------------------------------------------------------

@dataclass
class LoadSample:
    """One reading. busy_s: CPU seconds all CPUs spent not idle since boot (None where
    unreadable); own_s: this process's CPU seconds (all threads); cpus: CPUs busy_s covers."""

    wall: float
    busy_s: float | None
    own_s: float
    cpus: int
    loadavg1: float | None = None
    freq_mhz: float | None = None


class LoadSource(Protocol):
    def sample(self) -> LoadSample: ...


def _read_freq_mhz() -> float | None:
    """Mean current CPU frequency (cpufreq sysfs, else /proc/cpuinfo), None where unreadable."""
    vals = []
    base = "/sys/devices/system/cpu"
    try:
        for d in sorted(os.listdir(base)):
            p = os.path.join(base, d, "cpufreq", "scaling_cur_freq")
            if d.startswith("cpu") and d[3:].isdigit() and os.path.exists(p):
                with open(p) as f:
                    vals.append(int(f.read()) / 1000.0)
    except OSError:
        vals = []
    if not vals:
        try:
            with open("/proc/cpuinfo") as f:
                vals = [float(ln.split(":", 1)[1]) for ln in f if ln.lower().startswith("cpu mhz")]
        except (OSError, ValueError):
            vals = []
    return sum(vals) / len(vals) if vals else None


class SystemLoad:
    """The real machine: /proc/stat (psutil where /proc is absent), this process's CPU time,
    the 1-minute load average and the CPU frequency."""

    def sample(self) -> LoadSample:
        st = proc_stat_busy()
        if st is None:
            try:
                import psutil
                ct = psutil.cpu_times()
                busy = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
                st = (busy, psutil.cpu_count() or 1)
            except Exception:  # noqa: BLE001 - no load reading is a reported gap, not a crash
                st = (None, os.cpu_count() or 1)
        try:
            la = os.getloadavg()[0]
        except (OSError, AttributeError):
            la = None
        return LoadSample(wall=time.monotonic(), busy_s=st[0], own_s=time.process_time(), cpus=st[1],
                          loadavg1=la, freq_mhz=_read_freq_mhz())


@dataclass
class LoadSummary:
    """What the machine did while we timed. background: CPU time of other processes as a
    fraction of the machine's capacity (cpus x wall); own: ours, same unit."""

    wall_s: float
    cpus: int
    background: float | None
    own: float | None
    background_max_round: float | None
    loadavg1: float | None
    freq_mhz_min: float | None
    freq_mhz_max: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        parts = []
        if self.background is not None:
            parts.append(f"other processes used {100 * self.background:.0f} % of {self.cpus} CPUs")
        else:
            parts.append("background CPU use not readable")
        if self.loadavg1 is not None:
            parts.append(f"load average {self.loadavg1:.2f}")
        if self.freq_mhz_min is not None:
            f = f"{self.freq_mhz_min:.0f}" if abs(self.freq_mhz_max - self.freq_mhz_min) < 1 else \
                f"{self.freq_mhz_min:.0f}-{self.freq_mhz_max:.0f}"
            parts.append(f"CPU {f} MHz")
        return ", ".join(parts)


def _fraction(a: LoadSample, b: LoadSample) -> tuple[float | None, float | None]:
    wall = b.wall - a.wall
    if wall <= 0:
        return None, None
    cap = wall * b.cpus
    own = max(0.0, b.own_s - a.own_s)
    if a.busy_s is None or b.busy_s is None:
        return None, own / cap
    return max(0.0, (b.busy_s - a.busy_s) - own) / cap, own / cap


def summarize_load(samples: Sequence[LoadSample]) -> LoadSummary:
    """Whole-run and worst-round background share from consecutive samples (one per round)."""
    first, last = samples[0], samples[-1]
    bg, own = _fraction(first, last)
    per_round = [f for f in (_fraction(a, b)[0] for a, b in zip(samples, samples[1:])) if f is not None]
    freqs = [s.freq_mhz for s in samples if s.freq_mhz is not None]
    las = [s.loadavg1 for s in samples if s.loadavg1 is not None]
    return LoadSummary(wall_s=last.wall - first.wall, cpus=last.cpus, background=bg, own=own,
                       background_max_round=max(per_round) if per_round else None,
                       loadavg1=max(las) if las else None,
                       freq_mhz_min=min(freqs) if freqs else None, freq_mhz_max=max(freqs) if freqs else None)


# --- ratios and verdicts ---------------------------------------------------------------------

@dataclass
class Ratio:
    """How many times faster `name` ran than `base`, from paired rounds: per round t_base/t_name,
    combined as the geometric mean, with a 95 % t interval on the log ratios."""

    name: str
    base: str
    estimate: float
    lo: float
    hi: float
    n: int

    @property
    def rel_half_width(self) -> float:
        return (self.hi - self.lo) / (2 * self.estimate) if self.estimate > 0 else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "rel_half_width": self.rel_half_width}


def paired_ratio(name: str, base: str, t_name: Sequence[float], t_base: Sequence[float]) -> Ratio:
    logs = [math.log(b / a) for a, b in zip(t_name, t_base) if a > 0 and b > 0]
    n = len(logs)
    if n == 0:
        return Ratio(name, base, math.nan, math.nan, math.nan, 0)
    m = statistics.fmean(logs)
    if n == 1:
        return Ratio(name, base, math.exp(m), 0.0, math.inf, 1)
    half = t975(n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return Ratio(name, base, math.exp(m), math.exp(m - half), math.exp(m + half), n)


@dataclass
class Verdict:
    """status: "ok" (a ratio you can quote), "same" (interval contains 1: no measurable
    difference), "noisy" (interval too wide), "busy" (others used the CPUs), "reference"."""

    status: str
    reasons: list[str]
    ratio: dict | None = None

    @property
    def cell(self) -> str:
        """What a table prints: the ratio only when it can be trusted, else the interval and why."""
        r = self.ratio
        if self.status == "reference":
            return "1.00x (ref)"
        if r is None or not r.get("n") or not math.isfinite(r.get("hi", math.nan)):
            return "not measured" if r is None or not r.get("n") else f"{r['estimate']:.2f}x? (1 round)"
        iv = f"{r['lo']:.2f}-{r['hi']:.2f}x"
        if self.status == "ok":
            return f"{r['estimate']:.2f}x ±{100 * r['rel_half_width']:.0f}%"
        if self.status == "same":
            return f"≈1 ({iv})"
        return f"{self.status}! {iv}"

    def to_dict(self) -> dict:
        return {"status": self.status, "reasons": self.reasons, "cell": self.cell}


def judge(ratio: Ratio | None, load: LoadSummary | None, max_rel_half_width: float = MAX_REL_HALF_WIDTH,
          max_background: float = MAX_BACKGROUND) -> Verdict:
    """Busy beats noisy beats same beats ok: the first thing a reader must know comes first."""
    rd = ratio.to_dict() if ratio is not None else None
    reasons = []
    if load is not None and load.background is not None and load.background > max_background:
        reasons.append(f"{load.text()} during the run (limit {100 * max_background:.0f} %)")
        return Verdict("busy", reasons, rd)
    if ratio is None or ratio.n < 2 or not math.isfinite(ratio.rel_half_width):
        return Verdict("noisy", ["fewer than 2 paired rounds: no interval"], rd)
    if ratio.rel_half_width > max_rel_half_width:
        reasons.append(f"95 % interval ±{100 * ratio.rel_half_width:.0f} % over {ratio.n} rounds "
                       f"(limit ±{100 * max_rel_half_width:.0f} %)")
        return Verdict("noisy", reasons, rd)
    if ratio.lo <= 1.0 <= ratio.hi:
        return Verdict("same", [f"95 % interval {ratio.lo:.3f}-{ratio.hi:.3f} contains 1"], rd)
    return Verdict("ok", [], rd)


# --- the interleaved run ---------------------------------------------------------------------

@dataclass
class Task:
    """One thing to time: `run` is timed, `setup` (untimed) runs before each call; `work` is
    what one run does (tokens), so rate = work / time."""

    name: str
    run: Callable[[], object]
    setup: Callable[[], object] | None = None
    work: float = 1.0


@dataclass
class Interleaved:
    times: dict[str, list[float]]
    work: dict[str, float]
    rounds: int
    warmup: int
    order: list[list[str]]
    load: LoadSummary
    samples: list[LoadSample] = field(repr=False, default_factory=list)

    def rate(self, name: str) -> float:
        """work per second from the median run (what the protocol calls tok/s)."""
        return self.work[name] / statistics.median(self.times[name])

    def ratio(self, name: str, base: str) -> Ratio:
        return paired_ratio(name, base, self.times[name], self.times[base])

    def verdict(self, name: str, base: str, **kw) -> Verdict:
        return judge(self.ratio(name, base), self.load, **kw)

    def to_dict(self) -> dict:
        return {"times_s": self.times, "work": self.work, "rounds": self.rounds, "warmup": self.warmup,
                "order": "alternating (AB, BA, ...)", "load": self.load.to_dict()}


def interleave(tasks: Sequence[Task], groups: Sequence[Sequence[str]] | None = None, min_rounds: int = 4,
               max_rounds: int = 10, warmup: int = 1, target_rel_half_width: float = TARGET_REL_HALF_WIDTH,
               base: str | None = None, clock: Callable[[], float] = time.perf_counter,
               load: LoadSource | None = None) -> Interleaved:
    """Time `tasks` in turns. Each round runs every task once; the order within a group reverses
    every round (AB, BA, AB, ...) so a drift (warming caches, turbo decay) falls on both sides
    equally. `groups` lists names that are compared with each other (e.g. [[parent/prefill,
    int4/prefill], [parent/decode, int4/decode]]); by default all tasks form one group.

    Warm-up rounds are run and discarded. After `min_rounds`, rounds continue until every
    ratio against the first name of its group (or `base`) has a 95 % interval within
    ±target_rel_half_width, or `max_rounds` is reached: a quiet machine pays for few rounds,
    a noisy one for more, and one that stays noisy is reported as noisy.
    """
    by = {t.name: t for t in tasks}
    if len(by) != len(tasks):
        raise ValueError("task names must be unique")
    groups = [list(g) for g in (groups or [[t.name for t in tasks]])]
    load = load or SystemLoad()
    times = {t.name: [] for t in tasks}
    order_log: list[list[str]] = []

    def one_round(flip: bool, record: bool) -> None:
        seq = []
        for g in groups:
            names = list(reversed(g)) if flip else list(g)
            for n in names:
                t = by[n]
                if t.setup is not None:
                    t.setup()
                t0 = clock()
                t.run()
                dt = clock() - t0
                if record:
                    times[n].append(dt)
                seq.append(n)
        if record:
            order_log.append(seq)

    for i in range(warmup):
        one_round(i % 2 == 1, record=False)
    samples = [load.sample()]
    r = 0
    while r < max_rounds:
        one_round(r % 2 == 1, record=True)
        samples.append(load.sample())
        r += 1
        if r >= min_rounds and r % 2 == 0:  # stop on a full AB/BA pair, so both orders are balanced
            worst = max((paired_ratio(n, base or g[0], times[n], times[base or g[0]]).rel_half_width
                         for g in groups for n in g if n != (base or g[0]) and (base or g[0]) in g),
                        default=0.0)
            if worst <= target_rel_half_width:
                break
    return Interleaved(times=times, work={t.name: t.work for t in tasks}, rounds=r, warmup=warmup,
                       order=order_log, load=summarize_load(samples), samples=samples)
