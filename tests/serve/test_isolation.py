"""One bad request must never hurt another (issue 16): a fault that one sequence causes fails that sequence
only, the rest of the batch finishes with the tokens it would have had, and every block comes back; a client
that stops reading its stream is cancelled at the buffer cap instead of buffering without end."""
import asyncio
import json
import time

import pytest
import torch

from sizewise.serve.api import create_app
from sizewise.serve.engine import BadRequest

from . import tiny
from .test_engine import engine_for, greedy

N = 6


def _faulty(eng, should_fail):
    """Wrap the runner's forward: raise when should_fail(batch) says so (a fault tied to one sequence)."""
    real = eng.runner.forward
    calls = []

    def forward(batch):
        calls.append([s.seq_id for s in batch])
        if should_fail(batch):
            raise IndexError("injected: index out of range in self")
        return real(batch)

    eng.runner.forward = forward
    return calls


def _run(eng, prompts, n_tokens):
    """Submit everything before the loop starts (so they share batches), then collect."""
    handles = [eng.submit(p, greedy(n)) for p, n in zip(prompts, n_tokens)]
    eng.start()
    try:
        return handles, [h.result(timeout=60) for h in handles]
    finally:
        eng.shutdown(drain_s=1)


@pytest.mark.parametrize("when", ["prefill", "mid-decode"])
def test_fault_in_one_row_fails_only_that_request(llama_case, when):
    model, prompts, refs = llama_case
    eng = engine_for(model)
    free0 = eng.pool.free_blocks
    bad = {"id": None}
    # the culprit is the 3rd request; "mid-decode" lets it produce 4 tokens first (its 5th step fails)
    calls = _faulty(eng, lambda batch: any(s.seq_id == bad["id"] and (when == "prefill" or s.start >= len(prompts[2]) + 3)
                                           for s in batch))
    handles = [eng.submit(p, greedy(len(r))) for p, r in zip(prompts[:N], refs[:N])]
    bad["id"] = handles[2].request_id
    eng.start()
    try:
        out = [h.result(timeout=60) for h in handles]
    finally:
        eng.shutdown(drain_s=1)
    for i, (c, r) in enumerate(zip(out, refs[:N])):
        if i == 2:
            assert c.finish_reason == "error" and "alone" in c.error and "IndexError" in c.error
            assert c.token_ids == (refs[2][:4] if when == "mid-decode" else [])
        else:
            assert c.finish_reason == "length" and c.token_ids == r, i  # the same tokens as without the fault
    assert any(len(b) > 1 and bad["id"] in b for b in calls)  # the fault did hit a shared batch
    assert eng.pool.free_blocks == free0 and eng.pool.leaked_blocks() == 0
    assert eng.metrics.isolated_failures._value.get() == 1
    assert eng.metrics.step_failures.labels("isolated")._value.get() >= 1
    assert eng.crashed_steps == 0 and eng.finished_by_reason == {"length": N - 1, "error": 1}


def test_fault_only_in_combination_fails_nobody(llama_case):
    """Every row passes alone: the batch is not failed, each row continues from its solo logits."""
    model, prompts, refs = llama_case
    eng = engine_for(model)
    calls = _faulty(eng, lambda batch: len(batch) >= 3)
    _, out = _run(eng, prompts[:N], [len(r) for r in refs[:N]])
    assert [c.token_ids for c in out] == refs[:N]
    assert eng.metrics.step_failures.labels("recovered")._value.get() >= 1
    assert eng.metrics.isolated_failures._value.get() == 0 and len(calls) > N
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0


def test_unattributable_failure_is_retried_once_then_fails_the_batch(llama_case):
    """Every row fails alone too: the batch is retried once. A fault that lasts fails the batch's requests
    (and only those: later requests are served); one that clears in time fails nobody."""
    model, prompts, refs = llama_case
    eng = engine_for(model)
    state = {"broken": True}
    calls = _faulty(eng, lambda batch: state["broken"])
    _, out = _run(eng, prompts[:3], [4, 4, 4])
    assert [c.finish_reason for c in out] == ["error"] * 3
    # a batch of several is retried whole before failing; a batch of one has failed twice once it failed alone
    assert any("retried" in c.error for c in out)
    assert eng.metrics.step_failures.labels("batch_failed")._value.get() >= 1
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0
    state["broken"] = False
    eng2 = engine_for(model)
    n = {"k": 0}

    def fail_window(batch):  # fail the batched call and both solo retries, then let the batch retry through
        n["k"] += 1
        return 2 <= n["k"] <= 4

    _faulty(eng2, fail_window)
    h = [eng2.submit(p, greedy(4)) for p in prompts[:2]]
    eng2.start()
    try:
        out = [x.result(timeout=60) for x in h]
        later = eng2.generate(prompts[5], greedy(4), timeout=60)
    finally:
        eng2.shutdown(drain_s=1)
    assert [c.token_ids for c in out] == [r[:4] for r in refs[:2]] and later.token_ids == refs[5][:4]
    assert eng2.metrics.step_failures.labels("recovered")._value.get() == 1


def test_submit_rechecks_token_ids(llama_case):
    model, prompts, _ = llama_case
    eng = engine_for(model)
    for ids in ([1, -5], [1, 10**12], [1, model.config.vocab_size], [1, True], [1, 2.0]):
        with pytest.raises(BadRequest) as e:
            eng.submit(ids, greedy(2))
        assert e.value.param == "prompt"
    assert eng.num_active() == 0


def test_stalled_reader_is_cancelled_at_the_cap(llama_case):
    """A handle nobody reads is cancelled once `max_buffered_deltas` chunks wait; its backlog is dropped, its
    blocks freed, it is counted; a request read normally beside it is untouched."""
    model, prompts, refs = llama_case
    eng = engine_for(model, max_buffered_deltas=5, max_model_len=200)
    free0 = eng.pool.free_blocks
    eng.start()
    try:
        stalled = eng.submit(prompts[0], greedy(100))
        normal = eng.submit(prompts[1], greedy(len(refs[1])))
        assert normal.result(timeout=60).token_ids == refs[1]
        assert stalled.finished.wait(60)
        deadline = time.monotonic() + 5
        while stalled.buffered > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stalled.buffered == 1  # only the final delta is left waiting
        c = stalled.result(timeout=5)
    finally:
        eng.shutdown(drain_s=1)
    assert c.finish_reason == "slow_consumer" and "behind" in c.error
    assert c.completion_tokens == 6  # the 6th undelivered chunk tripped the cap
    assert eng.metrics.slow_consumers._value.get() == 1
    assert eng.pool.free_blocks == free0 and eng.pool.leaked_blocks() == 0


def test_client_that_stops_reading_an_http_stream_is_cancelled(llama_case):
    """Through the ASGI app: `send` blocks forever after the first chunk (a socket whose peer stopped reading),
    so the SSE generator stops pulling; the engine cancels the request at the cap and frees its blocks."""
    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=512)
    eng = engine_for(model, tok=tok, max_buffered_deltas=8)
    app = create_app(eng, "tiny", own_engine=False)
    body = json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 300, "stream": True, "ignore_eos": True,
                       "temperature": 0}).encode()

    async def drive():
        got_body = asyncio.Event()
        stuck = asyncio.Event()  # never set
        sent = []

        async def receive():
            if not sent:
                sent.append(1)
                return {"type": "http.request", "body": body, "more_body": False}
            await stuck.wait()

        async def send(msg):
            if msg["type"] == "http.response.body" and msg.get("body"):
                if got_body.is_set():
                    await stuck.wait()
                got_body.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        task = asyncio.create_task(app(scope, receive, send))
        deadline = time.monotonic() + 60
        while eng.finished_by_reason.get("slow_consumer", 0) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the app is torn down mid-send
            pass

    eng.start()
    try:
        asyncio.run(drive())
    finally:
        eng.shutdown(drain_s=1)
    assert eng.finished_by_reason.get("slow_consumer") == 1
    assert eng.metrics.slow_consumers._value.get() == 1
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0
