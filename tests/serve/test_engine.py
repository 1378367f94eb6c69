"""The engine loop: continuous batching keeps greedy tokens identical to generate(); blocks come back."""
import time

import pytest
import torch

from sizewise.serve.engine import BadRequest, Engine, EngineConfig, QueueFull
from sizewise.serve.sampling import SamplingParams

from . import tiny


def engine_for(model, *, tok=None, kv_tokens=4000, block_size=4, **cfg):
    from sizewise.serve.runner import kv_layout

    tok = tok or tiny.byte_tokenizer()
    e = Engine(model, tok, EngineConfig(kv_memory_bytes=kv_tokens * kv_layout(model).bytes_per_token,
                                        block_size=block_size, latency_target_s=None, **cfg))
    return e


def greedy(max_tokens):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def test_staggered_arrivals_match_generate(llama_case):
    """Requests join a running batch at token boundaries; each output equals generate() alone."""
    model, prompts, refs = llama_case
    eng = engine_for(model).start()
    try:
        handles = []
        for i, p in enumerate(prompts):
            k = 1 + i % len(refs[0])  # mixed max_tokens: some finish while others join
            handles.append((eng.submit(p, greedy(k)), refs[i][:k]))
            if i % 3 == 0:
                time.sleep(0.01)
        for h, want in handles:
            c = h.result(timeout=60)
            assert c.token_ids == want
            assert c.finish_reason == "length" and c.completion_tokens == len(want)
        assert eng.steps < sum(len(w) for _, w in handles)  # sequences really shared steps
    finally:
        eng.shutdown(drain_s=1)
    st = eng.stats()
    assert st["kv_blocks_used"] == 0 and st["kv_leaked_blocks"] == 0 and st["crashed_steps"] == 0


def test_preemption_recomputes_identically(llama_case):
    """A pool too small for the batch: the newest sequences are preempted and recomputed, tokens unchanged."""
    model, prompts, refs = llama_case
    eng = engine_for(model, kv_tokens=120, block_size=4)
    hs = [eng.submit(p, greedy(len(r))) for p, r in zip(prompts, refs)]  # queued before the loop starts
    eng.start()
    try:
        assert [h.result(timeout=60).token_ids for h in hs] == refs
    finally:
        eng.shutdown(drain_s=1)
    assert eng.scheduler.num_preemptions > 0
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0
    assert eng.pool.peak_used_blocks <= eng.pool.num_blocks


def test_abort_frees_blocks_and_reports_cancelled():
    model = tiny.tiny_llama(seed=0, dtype=torch.float32, max_position_embeddings=4096)
    eng = engine_for(model).start()
    try:
        h = eng.submit([1, 5, 6, 7], greedy(3000))
        first = next(h.iter(timeout=30))
        assert first.finish_reason is None
        assert eng.pool.used_blocks > 0
        eng.abort(h.request_id)
        last = list(h.iter(timeout=30))[-1]
        assert last.finish_reason == "cancelled" and last.completion_tokens < 3000
        deadline = time.monotonic() + 10
        while eng.pool.used_blocks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0
    finally:
        eng.shutdown(drain_s=0)


def test_stop_strings_and_seeded_sampling():
    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=2, vocab=len(tok), dtype=torch.float32)
    eng = engine_for(model, tok=tok).start()
    try:
        ids = tok.encode("hello world")
        full = eng.generate(ids, greedy(12), timeout=30)
        assert full.finish_reason == "length" and len(full.token_ids) == 12
        text = full.text
        stop = next((text[i:i + 2] for i in range(3, len(text) - 1) if text[i:i + 2].isprintable()
                     and text.find(text[i:i + 2]) == i), None)
        assert stop, f"no usable stop string in {text!r}"
        cut = eng.generate(ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=[stop]), timeout=30)
        assert cut.finish_reason == "stop" and cut.text == text[:text.find(stop)]
        sp = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=50, seed=123, ignore_eos=True)
        a = eng.generate(ids, sp, timeout=30).token_ids
        # the same seed while other requests share the batch gives the same tokens
        others = [eng.submit(tok.encode("x" * n), greedy(8)) for n in (3, 9, 17)]
        b = eng.generate(ids, sp, timeout=30).token_ids
        for o in others:
            o.result(timeout=30)
        c = eng.generate(ids, SamplingParams(max_tokens=10, temperature=0.9, seed=124, ignore_eos=True), timeout=30).token_ids
        assert a == b and a != c
    finally:
        eng.shutdown(drain_s=1)


def test_eos_stops_and_bad_requests_are_refused():
    model = tiny.tiny_llama(seed=0, dtype=torch.float32)
    eng = engine_for(model, max_waiting=2)
    # the engine is not started: accepted requests only queue
    with pytest.raises(BadRequest) as e:
        eng.submit(list(range(1, 300)), greedy(4))
    assert e.value.param == "prompt"
    with pytest.raises(BadRequest) as e:
        eng.submit([1, 2, 3], greedy(eng.max_model_len))
    assert e.value.param == "max_tokens"
    with pytest.raises(BadRequest):
        eng.submit([], greedy(4))
    eng.submit([1, 4], greedy(2))
    eng.submit([1, 5], greedy(2))
    with pytest.raises(QueueFull):
        eng.submit([1, 6], greedy(2))


def test_eos_token_finishes_with_stop(llama_case):
    model, prompts, refs = llama_case
    i, j = next((i, j) for i, r in enumerate(refs) for j in range(1, len(r)) if r[j] not in r[:j])
    eos = refs[i][j]  # pretend this token is EOS: generation must stop right before it
    eng = engine_for(model)
    eng.eos_ids = {eos}
    eng.start()
    try:
        c = eng.generate(prompts[i], SamplingParams(max_tokens=len(refs[i]), temperature=0), timeout=30)
    finally:
        eng.shutdown(drain_s=1)
    assert c.finish_reason == "stop" and c.token_ids == refs[i][: j + 1]


def test_transient_step_failure_is_retried_not_failed(llama_case):
    """A fault that no single row reproduces (transient) fails nobody: the rows rerun alone and carry on
    with the tokens they would have had (tests/serve/test_isolation.py covers faults that one row causes)."""
    model, prompts, refs = llama_case
    eng = engine_for(model)
    real = eng.runner.forward
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault")
        return real(batch)

    eng.runner.forward = flaky
    eng.start()
    try:
        first = eng.generate(prompts[0], greedy(4), timeout=30)
        assert first.finish_reason == "length" and first.token_ids == refs[0][:4]
        good = eng.generate(prompts[1], greedy(len(refs[1])), timeout=30)
        assert good.token_ids == refs[1]
    finally:
        eng.shutdown(drain_s=1)
    assert eng.failed_steps == 1 and eng.crashed_steps == 0
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0


def test_run_while_runs_the_loop_on_the_calling_thread(llama_case):
    """serve/bench-serve keep torch on the model's thread (libgomp, see engine.py): `run_while` runs the engine
    loop here while the caller's function (a server, a benchmark) runs in a helper thread."""
    import threading

    model, prompts, refs = llama_case
    eng = engine_for(model)
    seen = set()
    forward = eng.runner.forward

    def recording(batch):
        seen.add(threading.current_thread().name)
        return forward(batch)

    eng.runner.forward = recording

    def client():
        assert eng.start() is eng and eng._thread is None  # an app's start() does not add a loop thread
        return [eng.submit(p, greedy(3)).result(timeout=60).token_ids for p in prompts[:4]]

    assert eng.run_while(client) == [r[:3] for r in refs[:4]]
    assert seen == {threading.current_thread().name}
    assert not eng._looping and not eng.hosted

    def broken():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        eng.run_while(broken)
