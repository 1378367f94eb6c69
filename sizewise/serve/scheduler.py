"""Waiting and running queues; admission by free KV blocks and a decode-latency target; preemption.

Every step the scheduler (1) gives each running sequence a slot for its next token, preempting
the newest running sequence (its blocks are freed; it is recomputed later from its tokens)
when the pool runs dry, then (2) admits waiting sequences of one prompt-length bucket while
blocks, the batch cap, the prefill token budget and the predicted decode latency allow.
It knows the pool's block accounting and nothing of models (vLLM v1's scheduler split).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from sizewise.serve.kv_pool import KVPool
from sizewise.serve.sampling import SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    arrival: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    cached: int = 0  # tokens whose KV is in the pool
    status: Status = Status.WAITING
    preemptions: int = 0
    finish_reason: str | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class SchedulerConfig:
    max_batch: int = 32
    max_prefill_tokens: int = 4096  # per step; one longer prompt is still admitted alone
    latency_target_s: float | None = 0.5  # predicted decode step time allowed when admitting; None = off
    watermark: float = 0.01  # fraction of blocks kept free for running sequences' growth


def bucket(n_tokens: int) -> int:
    """Length bucket: the next power of two (at least 16), so a prefill batch pads little."""
    b = 16
    while b < n_tokens:
        b *= 2
    return b


class LatencyModel:
    """Decode step time ~ a + b * batch, fitted online with exponential forgetting."""

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self.s = [0.0] * 5  # weight, sum x, sum y, sum xx, sum xy

    def observe(self, batch: int, seconds: float) -> None:
        d = self.decay
        w, sx, sy, sxx, sxy = (v * d for v in self.s)
        self.s = [w + 1, sx + batch, sy + seconds, sxx + batch * batch, sxy + batch * seconds]

    def predict(self, batch: int) -> float | None:
        w, sx, sy, sxx, sxy = self.s
        if w < 1e-9:
            return None
        den = w * sxx - sx * sx
        if den < 1e-6 * max(w * sxx, 1e-12):  # one batch size seen so far: assume flat
            return sy / w
        slope = max((w * sxy - sx * sy) / den, 0.0)
        icpt = (sy - slope * sx) / w
        return icpt + slope * batch


@dataclass
class SchedulerOutput:
    prefill: list[Sequence]
    decode: list[Sequence]
    preempted: list[Sequence]


class Scheduler:
    def __init__(self, pool: KVPool, config: SchedulerConfig | None = None):
        self.pool = pool
        self.config = config or SchedulerConfig()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.latency = LatencyModel()
        self.num_preemptions = 0

    # -- queue changes ------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a sequence from whichever queue holds it and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.free(seq.seq_id)
        seq.status, seq.finish_reason = Status.FINISHED, reason

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free(seq.seq_id)
        seq.cached = 0
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # -- the step ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        preempted: list[Sequence] = []
        decode: list[Sequence] = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING:
                continue
            while not self.pool.can_reserve(seq.seq_id, seq.num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                self.pool.reserve(seq.seq_id, seq.num_tokens)
                decode.append(seq)
        prefill = [] if preempted else self._admit(len(decode))
        return SchedulerOutput(prefill, decode, preempted)

    def _admit(self, n_running: int) -> list[Sequence]:
        cfg = self.config
        if not self.waiting:
            return []
        want = bucket(self.waiting[0].num_tokens)
        keep_free = int(cfg.watermark * self.pool.num_blocks)
        chosen: list[Sequence] = []
        tokens = 0
        for seq in list(self.waiting):
            if bucket(seq.num_tokens) != want:
                continue
            n = n_running + len(chosen)
            if n >= cfg.max_batch:
                break
            if chosen and tokens + seq.num_tokens > cfg.max_prefill_tokens:
                break
            if n > 0 and cfg.latency_target_s is not None:
                pred = self.latency.predict(n + 1)
                if pred is not None and pred > cfg.latency_target_s:
                    break
            reserve = keep_free if n > 0 else 0
            if not self.pool.can_reserve(seq.seq_id, seq.num_tokens, reserve):
                break
            self.pool.reserve(seq.seq_id, seq.num_tokens)
            self.waiting.remove(seq)
            seq.status = Status.RUNNING
            chosen.append(seq)
            tokens += seq.num_tokens
        self.running.extend(chosen)
        return chosen

    def record_decode(self, batch: int, seconds: float) -> None:
        self.latency.observe(batch, seconds)
