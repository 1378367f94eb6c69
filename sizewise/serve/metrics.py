"""Prometheus metrics for the serving engine, and threshold alerts that name their remedy.

Each engine owns its own CollectorRegistry (several engines can live in one process, e.g. tests).
Alert inputs, each with a normal and an alert threshold (defaults from DESIGN.md, configurable):
  latency_p95    p95 inter-token latency over the last `window_s` seconds (seconds per output token)
  memory         KV pool occupancy = used blocks / total blocks (the engine's memory budget)
  fragmentation  KV internal fragmentation = allocated-but-unused slots / allocated slots
Level 0 = normal (below `normal_below`), 1 = warning (between), 2 = alert (above `alert_above`); an alert
stays raised until its value is back below `normal_below` (hysteresis, so a value near the line does not flap).
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("sizewise.serve")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class AlertRule:
    name: str
    what: str
    normal_below: float
    alert_above: float
    remedy: str


def default_rules(latency_normal: float = 0.5, latency_alert: float = 1.0, memory_normal: float = 0.80,
                  memory_alert: float = 0.95, frag_normal: float = 0.15, frag_alert: float = 0.30) -> list[AlertRule]:
    return [
        AlertRule("latency_p95", "p95 inter-token latency (s)", latency_normal, latency_alert,
                  "quantize or prune the model (sizewise compress) to cut time per token"),
        AlertRule("memory", "KV pool occupancy (used/total blocks)", memory_normal, memory_alert,
                  "lower the batch (--max-batch) or give the pool more memory (--kv-memory)"),
        AlertRule("fragmentation", "KV internal fragmentation (unused/allocated slots)", frag_normal, frag_alert,
                  "compact or restart the pool (a smaller --block-size wastes less)"),
    ]


@dataclass
class AlertState:
    name: str
    value: float
    level: int  # 0 normal, 1 warning, 2 alert
    message: str
    remedy: str

    @property
    def label(self) -> str:
        return ("ok", "warning", "alert")[self.level]

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "level": self.label, "message": self.message, "remedy": self.remedy}


class AlertMonitor:
    """Evaluates rules on current values; logs each change of level once."""

    def __init__(self, rules: list[AlertRule] | None = None):
        self.rules = rules or default_rules()
        self.states: dict[str, AlertState] = {}

    def evaluate(self, values: dict[str, float]) -> list[AlertState]:
        out = []
        for r in self.rules:
            if r.name not in values or values[r.name] is None:
                continue
            v = float(values[r.name])
            level = 2 if v > r.alert_above else (1 if v >= r.normal_below else 0)
            prev = self.states.get(r.name)
            if prev is not None and prev.level == 2 and level == 1:
                level = 2  # hysteresis: an alert clears only when the value is back in the normal range
            msg = f"{r.what} = {v:.3g} (normal < {r.normal_below:g}, alert > {r.alert_above:g})"
            st = AlertState(r.name, v, level, msg, r.remedy)
            if level == 2 and (prev is None or prev.level < 2):
                log.warning("ALERT %s: %s; remedy: %s", r.name, msg, r.remedy)
            elif level < 2 and prev is not None and prev.level == 2:
                log.info("alert cleared %s: %s", r.name, msg)
            self.states[r.name] = st
            out.append(st)
        return out

    def active(self) -> list[AlertState]:
        return [s for s in self.states.values() if s.level == 2]


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: report 0, never crash the engine
        return 0


class MetricFamilies:
    """The metric objects of one CollectorRegistry.

    Why separate from EngineMetrics: an A/B server runs several engines behind one /metrics, and
    Prometheus allows each name once per registry; so the families are made once, with a leading
    `variant` label, and each engine binds its own children. `variant_label=False` keeps the
    unlabelled names a single-model server has always exposed (dashboards keep working)."""

    def __init__(self, variant_label: bool = False, registry: CollectorRegistry | None = None):
        self.variant_label = variant_label
        r = self.registry = registry or CollectorRegistry()
        v = ["variant"] if variant_label else []

        def mk(cls, name, doc, labels=(), **kw):
            return cls(name, doc, v + list(labels), registry=r, **kw)

        self.running = mk(Gauge, "sizewise_requests_running", "Requests in the running batch")
        self.waiting = mk(Gauge, "sizewise_requests_waiting", "Requests waiting for admission")
        self.ttft = mk(Histogram, "sizewise_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS)
        self.itl = mk(Histogram, "sizewise_inter_token_latency_seconds", "Time between output tokens", buckets=LATENCY_BUCKETS)
        self.e2e = mk(Histogram, "sizewise_e2e_request_latency_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS)
        self.prompt_tokens = mk(Counter, "sizewise_prompt_tokens", "Prompt tokens processed")
        self.gen_tokens = mk(Counter, "sizewise_generation_tokens", "Tokens generated")
        self.requests = mk(Counter, "sizewise_requests", "Finished requests by reason", ["finish_reason"])
        self.preemptions = mk(Counter, "sizewise_preemptions", "Sequences preempted for recompute")
        self.tps = mk(Gauge, "sizewise_generation_tokens_per_second", "Generated tokens per second over the last 10 s")
        self.kv_used = mk(Gauge, "sizewise_kv_blocks_used", "KV blocks in use")
        self.kv_free = mk(Gauge, "sizewise_kv_blocks_free", "KV blocks free")
        self.kv_total = mk(Gauge, "sizewise_kv_blocks_total", "KV blocks in the pool")
        self.kv_usage = mk(Gauge, "sizewise_kv_usage_ratio", "Used / total KV blocks")
        self.kv_frag = mk(Gauge, "sizewise_kv_fragmentation_ratio", "Allocated-but-unused slots / allocated slots")
        self.kv_bytes = mk(Gauge, "sizewise_kv_pool_bytes", "Bytes preallocated for the KV pool")
        self.rss = mk(Gauge, "sizewise_process_resident_memory_bytes", "Resident memory of the server process")
        self.alert_level = mk(Gauge, "sizewise_alert_level", "0 normal, 1 warning, 2 alert", ["alert"])
        self.isolated_failures = mk(Counter, "sizewise_isolated_failures", "Requests failed alone because their row "
                                    "failed a step on its own; the rest of the batch carried on")
        self.step_failures = mk(Counter, "sizewise_step_failures", "Failed batched forward steps by outcome (isolated: "
                                "culprit rows found; recovered: every row passed alone; batch_failed: retried and failed)",
                                ["outcome"])
        self.slow_consumers = mk(Counter, "sizewise_slow_consumer_cancellations", "Streams cancelled because their "
                                 "client stopped reading past the output buffer cap")
        self.api_errors = mk(Counter, "sizewise_api_errors", "Error responses by HTTP status and code", ["status", "code"])
        self.threads = mk(Gauge, "sizewise_engine_threads", "Intra-op threads the engine computes with (the cores other "
                          "processes leave free unless fixed by --threads / SIZEWISE_THREADS)")
        self.thread_changes = mk(Counter, "sizewise_engine_thread_changes", "Times the engine resized its thread team "
                                 "because other processes took or freed cores")

    NAMES = ("running", "waiting", "ttft", "itl", "e2e", "prompt_tokens", "gen_tokens", "requests", "preemptions",
             "tps", "kv_used", "kv_free", "kv_total", "kv_usage", "kv_frag", "kv_bytes", "rss", "alert_level",
             "isolated_failures", "step_failures", "slow_consumers", "api_errors", "threads", "thread_changes")
    MORE_LABELS = ("requests", "alert_level", "step_failures", "api_errors")  # the families with a label of their own after `variant`


class _Bound:
    """A labelled family with its leading `variant` value filled in: `.labels(reason)` as before."""

    def __init__(self, family, variant: str):
        self.family, self.variant = family, variant

    def labels(self, *values: str):
        return self.family.labels(self.variant, *values)


def _bind(family, variant: str | None, more_labels: bool):
    if variant is None:
        return family
    return _Bound(family, variant) if more_labels else family.labels(variant)


class EngineMetrics:
    """Counters, gauges and histograms of one engine, plus the sliding windows the alerts read.

    `variant` labels every series of this engine (`variant="B"`); without it the names carry no
    label, exactly as before. `families` shares one registry between engines (see MetricFamilies)."""

    def __init__(self, rules: list[AlertRule] | None = None, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, *, variant: str | None = None,
                 families: MetricFamilies | None = None):
        self.clock = clock
        self.min_blocks_for_frag = 8
        self.window_s = window_s
        self.alerts = AlertMonitor(rules)
        self._itl: deque[tuple[float, float]] = deque(maxlen=20000)
        self._tok_times: deque[tuple[float, int]] = deque(maxlen=20000)
        fam = families or MetricFamilies(variant_label=variant is not None)
        if fam.variant_label != (variant is not None):
            raise ValueError("a variant name goes with variant-labelled families, and only with them")
        self.variant, self.families, self.registry = variant, fam, fam.registry
        for name in MetricFamilies.NAMES:
            setattr(self, name, _bind(getattr(fam, name), variant, name in MetricFamilies.MORE_LABELS))
        for outcome in ("isolated", "recovered", "batch_failed"):
            self.step_failures.labels(outcome)
        for rule in self.alerts.rules:
            self.alert_level.labels(rule.name).set(0)

    # -- events from the engine thread -------------------------------------------------
    def on_token(self, first: bool, seconds: float) -> None:
        now = self.clock()
        (self.ttft if first else self.itl).observe(seconds)
        if not first:
            self._itl.append((now, seconds))
        self._tok_times.append((now, 1))
        self.gen_tokens.inc()

    def on_finish(self, reason: str, e2e_s: float) -> None:
        self.requests.labels(reason).inc()
        self.e2e.observe(e2e_s)

    # -- derived values -----------------------------------------------------------------
    def latency_p95(self) -> float | None:
        cut = self.clock() - self.window_s
        xs = sorted(s for t, s in self._itl if t >= cut)
        if not xs:
            return None
        return xs[min(len(xs) - 1, int(0.95 * len(xs)))]

    def tokens_per_second(self, span: float = 10.0) -> float:
        now = self.clock()
        n = sum(k for t, k in self._tok_times if t >= now - span)
        return n / span

    def update(self, *, running: int, waiting: int, pool) -> list[AlertState]:
        """Refresh gauges from the engine's state and evaluate the alerts."""
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_used.set(pool.used_blocks)
        self.kv_free.set(pool.free_blocks)
        self.kv_total.set(pool.num_blocks)
        usage = pool.used_blocks / pool.num_blocks
        frag = pool.fragmentation()
        self.kv_usage.set(usage)
        self.kv_frag.set(frag)
        self.kv_bytes.set(pool.total_bytes)
        self.rss.set(_rss_bytes())
        self.tps.set(self.tokens_per_second())
        # a handful of short sequences always waste part of their last block: judge fragmentation under load only
        frag_in = frag if pool.used_blocks >= self.min_blocks_for_frag else None
        states = self.alerts.evaluate({"latency_p95": self.latency_p95(), "memory": usage, "fragmentation": frag_in})
        for s in states:
            self.alert_level.labels(s.name).set(s.level)
        return states

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
