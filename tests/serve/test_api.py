"""The OpenAI-compatible API on a live localhost server, driven by the official openai client and httpx."""
import json
import time

import httpx
import openai
import pytest
import torch

from sizewise.serve.api import create_app
from sizewise.serve.engine import Engine, EngineConfig
from sizewise.serve.runner import kv_layout
from sizewise.serve.sampling import SamplingParams
from sizewise.serve.server import BackgroundServer

from . import tiny

NAME = "tiny-llama"


@pytest.fixture(scope="module")
def live():
    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=4096)
    eng = Engine(model, tok, EngineConfig(kv_memory_bytes=6000 * kv_layout(model).bytes_per_token, block_size=8,
                                          max_model_len=4096))
    with BackgroundServer(create_app(eng, NAME)) as srv:
        yield srv, eng, tok
    assert eng.pool.leaked_blocks() == 0


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live[0].url + "/v1", api_key="unused", max_retries=0)


def direct(eng, ids, n):
    """The engine's own greedy tokens, for comparing what the API returns."""
    return eng.generate(ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), timeout=30)


def test_completion_plain_and_streaming(live, client):
    srv, eng, tok = live
    want = direct(eng, tok.encode("The cat"), 7)
    r = client.completions.create(model=NAME, prompt="The cat", max_tokens=7, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tok.encode("The cat")) and r.usage.completion_tokens == 7
    chunks = list(client.completions.create(model=NAME, prompt="The cat", max_tokens=7, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 7 and len([c for c in chunks if c.choices]) >= 2


def test_chat_plain_and_streaming(live, client):
    srv, eng, tok = live
    msgs = [{"role": "user", "content": "hi there"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    want = direct(eng, ids, 6)
    r = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.total_tokens == len(ids) + 6
    chunks = list(client.chat.completions.create(model=NAME, messages=msgs, max_tokens=6, temperature=0, stream=True,
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.completion_tokens == 6


def test_models_health_metrics(live, client):
    srv, eng, _ = live
    assert [m.id for m in client.models.list().data] == [NAME]
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok" and h["engine"]["kv_blocks_total"] == eng.pool.num_blocks
    assert {a["name"] for a in h["alerts"]} >= {"memory"}
    text = httpx.get(srv.url + "/metrics").text
    for name in ("sizewise_requests_running", "sizewise_requests_waiting", "sizewise_time_to_first_token_seconds_bucket",
                 "sizewise_inter_token_latency_seconds", "sizewise_e2e_request_latency_seconds",
                 "sizewise_generation_tokens_per_second", "sizewise_kv_blocks_used", "sizewise_kv_blocks_free",
                 "sizewise_kv_fragmentation_ratio", "sizewise_process_resident_memory_bytes", "sizewise_alert_level"):
        assert name in text, name


@pytest.mark.parametrize("body,param", [
    ("{not json", None),
    ('["a list"]', None),
    ('{"model": "other", "prompt": "x"}', "model"),
    ('{"model": "tiny-llama", "prompt": "x", "max_tokens": 0}', "max_tokens"),
    ('{"model": "tiny-llama", "prompt": "x", "max_tokens": "5"}', "max_tokens"),
    ('{"model": "tiny-llama", "prompt": "x", "max_tokens": 99999}', "max_tokens"),
    ('{"model": "tiny-llama", "prompt": "x", "stream": "yes"}', "stream"),
    ('{"model": "tiny-llama", "prompt": "x", "temperature": -1}', "temperature"),
    ('{"model": "tiny-llama"}', "prompt"),
])
def test_bad_requests_get_openai_errors(live, body, param):
    r = httpx.post(live[0].url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_prompt_longer_than_context(live):
    long = " ".join(["w"] * 2500)  # 4999 byte tokens > 4096
    r = httpx.post(live[0].url + "/v1/completions", json={"model": NAME, "prompt": long, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(live[0].url + "/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": 5}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")


def test_disconnect_mid_stream_frees_blocks(live):
    srv, eng, _ = live
    before = eng.finished_by_reason.get("disconnected", 0)
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", srv.url + "/v1/completions",
                      json={"model": NAME, "prompt": "go", "max_tokens": 3000, "stream": True, "ignore_eos": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [json.loads(l[6:]) for l, _ in zip((l for l in lines if l.startswith("data: ")), range(3))]
            assert all(g["choices"][0]["finish_reason"] is None for g in got)
            assert eng.pool.used_blocks > 0
    deadline = time.monotonic() + 20
    while (eng.pool.used_blocks or eng.finished_by_reason.get("disconnected", 0) == before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert eng.finished_by_reason.get("disconnected", 0) == before + 1
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0


def test_queue_full_is_429_with_retry_after():
    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32)
    eng = Engine(model, tok, EngineConfig(kv_memory_bytes=500 * kv_layout(model).bytes_per_token, max_waiting=1))
    # own_engine=False: the loop never starts, so the first request waits and the second finds the queue full
    with BackgroundServer(create_app(eng, NAME, own_engine=False)) as srv:
        with httpx.Client(timeout=10) as c:
            with c.stream("POST", srv.url + "/v1/completions", json={"model": NAME, "prompt": "a", "stream": True}):
                deadline = time.monotonic() + 10
                while eng.num_active() == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                r = c.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": "b"})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full"
