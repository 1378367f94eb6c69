"""The engine loop: one thread owns the scheduler, the runner and the pool.

Which thread matters on a small CPU: libgomp throttles its spin-waits to almost nothing once more
OpenMP threads exist than cores, and the first thread that ran torch (the one that loaded the
model) already owns a team. A second thread's team therefore makes every parallel op pay a futex
wake: a batch-16 decode step of the bundled model took 124 ms from a helper thread against 90 ms
from the loading thread on 2 cores. So `serve` and `bench-serve` run the loop on the main thread
(`Engine.run_while`) and put the HTTP server in a helper thread; `start()` (a background loop
thread) stays for tests and embedding, where speed does not matter.

Other threads (the API's event loop, a benchmark) talk to it only through `submit` and
`abort`, which post to an inbox; results come back on each request's handle (an asyncio
queue when submitted from an event loop, a thread queue otherwise). New requests join the
running batch at token boundaries; finished, cancelled or failed ones leave at once and
their blocks go back to the pool in the same step.

One bad request must never hurt another (issue 16). `submit` re-checks token ids against the
embedding rows even though the API already did (an embedding caller has no API in front of it).
When a batched forward still fails, `_isolate` runs each row alone: rows that fail alone are failed
with their error, the others continue from the solo logits, so they sample exactly what they would
have. If every row passes alone the failure was transient and nobody is failed; if every row fails
alone the batch is retried once and only then failed. Sampling and decoding are guarded per row.
A client that stops reading a stream falls behind its handle's buffer cap (`max_buffered_deltas`)
and is cancelled: its backlog is dropped and its blocks freed, so a stalled socket holds no more
than the cap in memory.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch

from sizewise.evaluate.threads import ThreadGovernor
from sizewise.serve.kv_pool import KVPool
from sizewise.serve.metrics import AlertRule, EngineMetrics
from sizewise.serve.runner import ModelRunner, StepInput, kv_layout, max_context
from sizewise.serve.sampling import SamplingParams, find_stop, safe_emit_len, sample
from sizewise.serve.scheduler import Scheduler, SchedulerConfig, Sequence, Status

log = logging.getLogger("sizewise.serve")
T = TypeVar("T")


class BadRequest(ValueError):
    """The request cannot be served as asked (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class QueueFull(RuntimeError):
    """Too many requests waiting (HTTP 429)."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and admits nothing new (HTTP 503)."""


@dataclass
class EngineConfig:
    kv_memory_bytes: int | None = None  # None: `kv_fraction` of available memory
    kv_fraction: float = 0.2
    block_size: int = 16
    max_batch: int = 32
    max_waiting: int = 256
    max_prefill_tokens: int = 4096
    latency_target_s: float | None = 0.5
    max_model_len: int | None = None  # default: the model's max_position_embeddings (capped by the pool)
    alert_rules: list[AlertRule] | None = None
    max_buffered_deltas: int | None = 512  # per request; a client this far behind is cancelled (None: no cap)
    threads: int | None = None  # intra-op threads; None: the cores other processes leave free, re-checked every second


@dataclass
class Delta:
    """What the engine tells a client after a step: new text, new tokens, and at the end why it stopped."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # why, when finish_reason is "error" or "slow_consumer"


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


# a consumer this many deltas behind gets them merged into one, so a client that is merely slower than
# the engine (an event loop under load) catches up instead of drifting towards the cap
MERGE_BACKLOG = 8


def _merge(a: Delta, b: Delta) -> Delta:
    return Delta(a.text + b.text, a.token_ids + b.token_ids, b.finish_reason, b.prompt_tokens, b.completion_tokens, b.error)


class RequestHandle:
    """A request's mailbox. Use `async for d in h.stream()` in an event loop, or `h.result()` from a thread.

    `buffered` counts deltas posted but not yet taken by the consumer; `_put` reports when it passes
    `max_buffered`, and the engine then cancels the request (a client that stopped reading)."""

    def __init__(self, request_id: int, loop: asyncio.AbstractEventLoop | None, max_buffered: int | None = None):
        self.request_id = request_id
        self._loop = loop
        self._aq: asyncio.Queue | None = asyncio.Queue() if loop else None
        self._q: queue.Queue = queue.Queue()
        self.finished = threading.Event()
        self.max_buffered = max_buffered
        self._buffered = 0
        self._count = threading.Lock()

    @property
    def buffered(self) -> int:
        return self._buffered

    def _count_by(self, k: int) -> int:
        with self._count:
            self._buffered += k
            return self._buffered

    def _put(self, d: Delta) -> bool:
        """Post a delta (engine thread). False when the consumer is now more than max_buffered behind."""
        n = self._count_by(1)
        if d.finish_reason is not None:
            self.finished.set()
        if self._loop is None:
            self._q.put(d)
        else:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, d)
            except RuntimeError:  # the client's loop is gone: nobody is listening
                pass
        return self.max_buffered is None or n <= self.max_buffered

    def _drop_backlog(self) -> None:
        """Forget undelivered deltas (the request is being cancelled for not reading them). Deltas posted
        after this call, like the final one, are kept: the loop runs callbacks in order."""
        def drain(q) -> None:
            while True:
                try:
                    q.get_nowait()
                except (asyncio.QueueEmpty, queue.Empty):
                    return
                self._count_by(-1)

        if self._loop is None:
            drain(self._q)
            return
        try:
            self._loop.call_soon_threadsafe(drain, self._aq)
        except RuntimeError:
            pass

    async def stream(self):
        while True:
            d = await self._aq.get()
            self._count_by(-1)
            while d.finish_reason is None and self._buffered >= MERGE_BACKLOG and not self._aq.empty():
                d = _merge(d, self._aq.get_nowait())
                self._count_by(-1)
            yield d
            if d.finish_reason is not None:
                return

    def iter(self, timeout: float | None = None):
        while True:
            d = self._q.get(timeout=timeout)
            self._count_by(-1)
            yield d
            if d.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> Completion:
        text, ids, last = [], [], None
        for d in self.iter(timeout):
            text.append(d.text)
            ids.extend(d.token_ids)
            last = d
        return Completion("".join(text), ids, last.finish_reason, last.prompt_tokens, last.completion_tokens, last.error)


@dataclass(eq=False)
class _Request:
    seq: Sequence
    handle: RequestHandle
    gen: torch.Generator | None
    sent: int = 0  # characters of output text already sent
    sent_tokens: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    stops: list[str] = field(default_factory=list)


def _available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


class Engine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None, *, metrics: EngineMetrics | None = None):
        self.config = cfg = config or EngineConfig()
        self.model, self.tokenizer = model, tokenizer
        layout = kv_layout(model)
        kv_bytes = cfg.kv_memory_bytes or int(cfg.kv_fraction * _available_memory())
        self.pool = KVPool.from_bytes(layout, kv_bytes, cfg.block_size)
        self.runner = ModelRunner(model, self.pool)
        self.scheduler = Scheduler(self.pool, SchedulerConfig(max_batch=cfg.max_batch, max_prefill_tokens=cfg.max_prefill_tokens,
                                                              latency_target_s=cfg.latency_target_s))
        self.metrics = metrics or EngineMetrics(cfg.alert_rules)
        self.max_model_len = min(cfg.max_model_len or max_context(model), self.pool.capacity_tokens)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)  # valid ids are [0, vocab_size)
        self.eos_ids = self._eos_ids()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count(1)
        self._pending = 0  # submitted but not yet seen by the loop
        self._lock = threading.Lock()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.hosted = False  # True while a caller's thread runs the loop (`run`): start() is then a no-op
        self._looping = False
        self._loop_done = threading.Event()
        self._host: threading.Thread | None = None
        self.steps = 0
        self.crashed_steps = 0
        self.failed_steps = 0  # batched forwards that raised and went through `_isolate`
        self.finished_by_reason: dict[str, int] = {}
        self.peak_kv_blocks = 0
        self.peak_fragmentation = 0.0
        self._frag_unused = self._frag_alloc = 0.0
        self.alerts: list = []
        self.governor: ThreadGovernor | None = None

    def _eos_ids(self) -> set[int]:
        ids = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            v = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
        return ids

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Run the loop in a background thread (tests, embedding). `run` is the fast path on a small CPU."""
        if self._thread is None and not self.hosted:
            n = torch.get_num_threads()  # the engine thread computes with the same intra-op threads as its creator
            self._thread = threading.Thread(target=self._loop, args=(n,), name="sizewise-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, drain_s: float = 30.0) -> None:
        """Stop admitting; let running requests finish for up to drain_s, cancel the rest; stop the thread."""
        self._accepting = False
        deadline = time.monotonic() + drain_s
        while self.num_active() and time.monotonic() < deadline and self._looping:
            time.sleep(0.02)
        for rid in list(self._requests):
            self.abort(rid, reason="cancelled")
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        elif self._looping and threading.current_thread() is not self._host:
            self._loop_done.wait(timeout=10)
        self._thread = None

    def stop(self) -> None:
        """End the loop for good after the current step."""
        self._stop = True
        self._wake.set()

    def run(self, until: threading.Event | None = None) -> None:
        """Run the loop in the calling thread until `until` is set or `shutdown`/`stop` is called elsewhere."""
        self.hosted, self._host = True, threading.current_thread()
        try:
            self._loop(torch.get_num_threads(), until)
        finally:
            self.hosted = False

    def run_while(self, fn: Callable[[], T]) -> T:
        """Call fn in a helper thread while this thread runs the loop; return fn's result (or raise its error).
        The loop ends when fn returns, or earlier if fn's server shuts the engine down."""
        done, box = threading.Event(), {}

        def target():
            try:
                box["result"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = e
            finally:
                done.set()
                self._wake.set()

        self.hosted = True  # before the helper starts, so an app's lifespan does not start a second loop thread
        helper = threading.Thread(target=target, name="sizewise-driver", daemon=True)
        helper.start()
        try:
            self.run(until=done)
        finally:
            done.wait()
            helper.join()
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def num_active(self) -> int:
        return len(self._requests) + self._pending

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- client side (any thread) ---------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        params = params or SamplingParams()
        if not self._accepting:
            raise EngineStopped("the server is shutting down")
        if not prompt_ids:
            raise BadRequest("prompt is empty", "prompt")
        bad = next((t for t in prompt_ids if type(t) is not int or not 0 <= t < self.vocab_size), None)
        if bad is not None:  # defence in depth: the API checks too, but an id past the embedding fails the whole batch
            raise BadRequest(f"prompt token id {bad!r} is not in this model's vocabulary [0, {self.vocab_size})", "prompt")
        if params.max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1 (got {params.max_tokens})", "max_tokens")
        if len(prompt_ids) >= self.max_model_len:
            raise BadRequest(f"prompt has {len(prompt_ids)} tokens; this server's context is {self.max_model_len} tokens", "prompt")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise BadRequest(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context of "
                             f"{self.max_model_len} tokens: lower max_tokens to at most {self.max_model_len - len(prompt_ids)}",
                             "max_tokens")
        with self._lock:
            if len(self.scheduler.waiting) + self._pending >= self.config.max_waiting:
                raise QueueFull(f"{self.config.max_waiting} requests are waiting")
            self._pending += 1
        rid = next(self._ids)
        handle = RequestHandle(rid, loop, self.config.max_buffered_deltas)
        seq = Sequence(rid, list(prompt_ids), params)
        stops = [s for s in params.stop if s]
        self._inbox.put(("add", _Request(seq, handle, params.generator(), stops=stops)))
        self._wake.set()
        return handle

    def abort(self, request_id: int, reason: str = "cancelled") -> None:
        """Cancel a request (client gone, shutdown); its blocks are freed in the engine thread."""
        self._inbox.put(("abort", (request_id, reason)))
        self._wake.set()

    def generate(self, prompt_ids: list[int], params: SamplingParams | None = None, timeout: float | None = None) -> Completion:
        return self.submit(prompt_ids, params).result(timeout)

    # -- engine thread ------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                with self._lock:
                    self._pending -= 1
                self._requests[item.seq.seq_id] = item
                self.scheduler.add(item.seq)
                self.metrics.prompt_tokens.inc(len(item.seq.prompt_ids))
            elif kind == "abort":
                rid, reason = item
                req = self._requests.get(rid)
                if req is not None:
                    self._finish(req, reason)

    def _loop(self, threads: int, until: threading.Event | None = None) -> None:
        # A core taken by another process stalls every parallel region of a full-width team (see
        # evaluate/threads.py): the governor shrinks the team while the core is busy and grows it back.
        self.governor = ThreadGovernor(fixed=self.config.threads, threads=self.config.threads or threads)
        self.governor.apply()
        self.metrics.threads.set(self.governor.threads)
        self._looping = True
        self._loop_done.clear()
        try:
            self._loop_body(until or threading.Event())
        finally:
            self._looping = False
            self._loop_done.set()

    def _loop_body(self, until: threading.Event) -> None:
        last_metrics = 0.0
        while not self._stop and not until.is_set():
            busy = False
            changes = self.governor.changes
            self.governor.tick()
            if self.governor.changes != changes:
                self.metrics.threads.set(self.governor.threads)
                self.metrics.thread_changes.inc()
                log.info("engine threads -> %d (other processes use %.1f cores)", self.governor.threads,
                         self.governor.others or 0.0)
            try:
                self._drain_inbox()
                busy = bool(self.scheduler.running or self.scheduler.waiting)
                if busy:
                    self.step()
            except Exception:  # noqa: BLE001 - a failed step fails its requests, never the server
                log.exception("engine step failed; failing the running requests")
                self.crashed_steps += 1
                for seq in list(self.scheduler.running):
                    req = self._requests.get(seq.seq_id)
                    if req is not None:
                        self._finish(req, "error")
            now = time.monotonic()
            if now - last_metrics > 0.25:
                self._update_metrics()
                last_metrics = now
            if not busy:
                self._wake.wait(0.05)
                self._wake.clear()

    def _update_metrics(self) -> None:
        self.alerts = self.metrics.update(running=len(self.scheduler.running), waiting=len(self.scheduler.waiting), pool=self.pool)

    def step(self) -> None:
        """One scheduler step: prefill the admitted bucket and decode everything that was running, together."""
        out = self.scheduler.schedule()
        self.steps += 1
        if out.preempted:
            self.metrics.preemptions.inc(len(out.preempted))
        self._track_pool()
        # one forward for everything: the admitted bucket's prompts and every running sequence's next token
        # (the runner packs tokens, so mixing lengths costs no padding in the linear layers)
        seqs = out.prefill + [s for s in out.decode if s.status is Status.RUNNING]
        if not seqs:
            return
        t0 = time.perf_counter()
        try:
            logits = self.runner.forward([self._input(s) for s in seqs])
        except Exception as e:  # noqa: BLE001 - find who caused it; fail only them
            seqs, logits = self._isolate(seqs, e)
            if not seqs:
                return
        else:
            if not out.prefill:  # pure decode steps feed the latency model behind admission
                self.scheduler.record_decode(len(seqs), time.perf_counter() - t0)
        for s in seqs:
            s.cached = s.num_tokens
        self._emit(seqs, logits)

    @staticmethod
    def _input(s: Sequence) -> StepInput:
        return StepInput(s.seq_id, s.tokens[s.cached:], s.cached)

    def _isolate(self, seqs: list[Sequence], exc: Exception) -> tuple[list[Sequence], torch.Tensor | None]:
        """A batched forward raised `exc`. Run each row alone: rows that fail alone are failed (their error goes to
        their client), the rest continue with their solo logits. Nothing in a failed forward is committed: `cached`
        only advances after success and a retry rewrites the same KV slots, so the survivors' tokens are unchanged.
        Returns the sequences to emit and their logits ([] and None when none are left)."""
        self.failed_steps += 1
        log.warning("engine step failed on a batch of %d (%s: %s); retrying each row alone",
                    len(seqs), type(exc).__name__, str(exc)[:200])
        good, rows, bad = [], [], []
        for s in seqs:
            if s.status is not Status.RUNNING:
                continue
            try:
                rows.append(self.runner.forward([self._input(s)])[0])
                good.append(s)
            except Exception as e:  # noqa: BLE001
                bad.append((s, e))
        if good and bad or (bad and len(seqs) == 1):  # culprits found (a single row has now failed twice)
            self.metrics.step_failures.labels("isolated").inc()
            for s, e in bad:
                self._fail(s, e, isolated=True)
            return good, (torch.stack(rows) if rows else None)
        if not bad:  # every row passed alone: transient, or only in combination; nobody is failed
            self.metrics.step_failures.labels("recovered").inc()
            log.warning("every row of the failed step passed alone; the batch continues")
            return good, (torch.stack(rows) if rows else None)
        # every row failed alone too: nothing singles out a culprit, so retry the batch once before failing it
        live = [s for s, _ in bad]
        try:
            logits = self.runner.forward([self._input(s) for s in live])
        except Exception as e:  # noqa: BLE001
            self.metrics.step_failures.labels("batch_failed").inc()
            log.error("engine step failed again on retry (%s: %s); failing its %d requests", type(e).__name__, e, len(live))
            for s in live:
                self._fail(s, e, isolated=False)
            return [], None
        self.metrics.step_failures.labels("recovered").inc()
        return live, logits

    def _fail(self, seq: Sequence, exc: BaseException, isolated: bool) -> None:
        req = self._requests.get(seq.seq_id)
        if req is None:
            return
        if isolated:
            self.metrics.isolated_failures.inc()
        why = "failed on this request alone; other requests were not affected" if isolated else "failed on a retried batch"
        self._finish(req, "error", error=f"generation {why} ({type(exc).__name__}: {str(exc)[:200]})")

    def _track_pool(self) -> None:
        """Peaks and the slot-weighted mean fragmentation (unused slot-steps / allocated slot-steps)."""
        pool = self.pool
        self.peak_kv_blocks = max(self.peak_kv_blocks, pool.used_blocks)
        if pool.used_blocks:
            frag = pool.fragmentation()
            alloc = pool.used_blocks * pool.block_size
            self.peak_fragmentation = max(self.peak_fragmentation, frag)
            self._frag_unused += frag * alloc
            self._frag_alloc += alloc

    def reset_peaks(self) -> None:
        self.peak_kv_blocks, self.peak_fragmentation = 0, 0.0
        self._frag_unused = self._frag_alloc = 0.0

    def _emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        now = time.monotonic()
        for b, seq in enumerate(seqs):
            req = self._requests.get(seq.seq_id)
            if req is None:
                continue
            try:
                self._emit_one(req, seq, logits[b], now)
            except Exception as e:  # noqa: BLE001 - sampling or detokenizing one row must not touch the others
                log.exception("request %d failed while sampling or decoding", seq.seq_id)
                self._fail(seq, e, isolated=True)

    def _emit_one(self, req: _Request, seq: Sequence, row: torch.Tensor, now: float) -> None:
        p = seq.params
        tok = sample(row, p, req.gen, seq.prompt_ids, seq.output_ids)
        seq.output_ids.append(tok)
        first = req.first_token_at is None
        self.metrics.on_token(first, now - (seq.arrival if first else req.last_token_at))
        if first:
            req.first_token_at = now
        req.last_token_at = now
        reason = None
        is_eos = (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids
        ids = seq.output_ids[:-1] if is_eos else seq.output_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = find_stop(text, req.stops)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif is_eos:
            reason = "stop"
        elif len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        n = len(text) if reason else safe_emit_len(text, req.stops)
        new_ids = seq.output_ids[req.sent_tokens:]
        req.sent_tokens = len(seq.output_ids)
        delta = Delta(text[req.sent:n] if n > req.sent else "", new_ids)
        req.sent = max(req.sent, n)
        if reason:
            self._finish(req, reason, last=delta)
        elif not req.handle._put(delta):  # the client stopped reading: cancel rather than buffer without end
            self.metrics.slow_consumers.inc()
            req.handle._drop_backlog()
            self._finish(req, "slow_consumer", error=f"the client fell more than {req.handle.max_buffered} chunks "
                                                     "behind the stream and it was cancelled")

    def _finish(self, req: _Request, reason: str, last: Delta | None = None, error: str | None = None) -> None:
        seq = req.seq
        self.scheduler.finish(seq, reason)
        self._requests.pop(seq.seq_id, None)
        d = last or Delta("", [])
        d.finish_reason, d.error = reason, error
        d.prompt_tokens, d.completion_tokens = len(seq.prompt_ids), len(seq.output_ids)
        req.handle._put(d)
        e2e = time.monotonic() - seq.arrival
        self.metrics.on_finish(reason, e2e)
        self.finished_by_reason[reason] = self.finished_by_reason.get(reason, 0) + 1
        ttft = (req.first_token_at - seq.arrival) if req.first_token_at else float("nan")
        log.info("request %d %s prompt=%d completion=%d ttft=%.3fs e2e=%.3fs preempted=%d", seq.seq_id, reason,
                 len(seq.prompt_ids), len(seq.output_ids), ttft, e2e, seq.preemptions)

    def stats(self) -> dict:
        """A snapshot for /health and benchmarks (read from any thread; values may be one step old)."""
        return {
            "running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
            "kv_blocks_total": self.pool.num_blocks, "kv_blocks_used": self.pool.used_blocks,
            "kv_blocks_free": self.pool.free_blocks, "kv_block_size": self.pool.block_size,
            "kv_pool_bytes": self.pool.total_bytes, "kv_fragmentation": self.pool.fragmentation(),
            "kv_leaked_blocks": self.pool.leaked_blocks(), "peak_kv_blocks": self.peak_kv_blocks,
            "peak_kv_bytes": self.peak_kv_blocks * self.pool.block_bytes, "peak_fragmentation": self.peak_fragmentation,
            "mean_fragmentation": self._frag_unused / self._frag_alloc if self._frag_alloc else 0.0,
            "preemptions": self.scheduler.num_preemptions, "steps": self.steps, "crashed_steps": self.crashed_steps,
            "failed_steps": self.failed_steps,
            "finished": dict(self.finished_by_reason), "max_model_len": self.max_model_len,
        }
