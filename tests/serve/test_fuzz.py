"""Property tests against a live server (issue 16): bodies drawn from the API's schema (each field valid or
any JSON value) and from arbitrary bytes never get a 5xx, every error is OpenAI-shaped, and greedy requests
running concurrently with the fuzzing all come back exactly as in a baseline run. benchmarks/bench_fuzz.py
is the long version against a real `sizewise serve`."""
import json
import threading
import time

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import EDGE_MODEL

VOCAB = 260

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=10)


def field(valid):
    return st.one_of(valid, valid, json_values)  # mostly well-formed, so deeper checks are reached


token = st.integers(0, VOCAB - 1)
common = {
    "temperature": field(st.floats(-0.5, 2.5)), "top_p": field(st.floats(-0.1, 1.1)),
    "top_k": field(st.integers(-2, 300)), "seed": field(st.integers(-2**64, 2**65)), "n": field(st.integers(0, 3)),
    "stream": field(st.booleans()), "stop": field(st.lists(st.text(max_size=3), max_size=5) | st.text(max_size=3)),
    "presence_penalty": field(st.floats(-3, 3)), "frequency_penalty": field(st.floats(-3, 3)),
    "repetition_penalty": field(st.floats(-1, 3)), "ignore_eos": field(st.booleans()),
    "logit_bias": field(st.dictionaries(st.integers(-5, VOCAB + 5).map(str), st.floats(-120, 120), max_size=3)),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "stop_token_ids": field(st.lists(st.integers(-2, VOCAB + 2), max_size=3)),
}
prompts = field(st.text(max_size=20) | st.lists(token, max_size=12) | st.lists(st.integers(-10, 10**13), max_size=4)
                | st.lists(st.lists(token, max_size=4), max_size=2) | st.lists(st.text(max_size=4), max_size=2))
part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "other"]), "text": field(st.text(max_size=6))})
message = st.fixed_dictionaries({"role": field(st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"])),
                                 "content": field(st.text(max_size=12) | st.lists(part, max_size=2))})
completion_bodies = st.fixed_dictionaries({"model": field(st.just(EDGE_MODEL)), "prompt": prompts,
                                           "max_tokens": field(st.integers(0, 3))}, optional=common)
chat_bodies = st.fixed_dictionaries({"model": field(st.just(EDGE_MODEL)), "messages": field(st.lists(message, max_size=3)),
                                     "max_tokens": field(st.integers(0, 3))},
                                    optional={**common, "logprobs": field(st.booleans()), "tools": json_values,
                                              "response_format": field(st.fixed_dictionaries(
                                                  {"type": st.sampled_from(["text", "json_object", "x"])}))})
# well-formed bodies with every optional field in range: these must be 200s (and exercise sampling options)
valid_options = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 50), "seed": st.integers(0, 2**63),
    "stream": st.booleans(), "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2), "repetition_penalty": st.floats(0.5, 2),
    "logit_bias": st.dictionaries(token.map(str), st.floats(-100, 100), max_size=3), "ignore_eos": st.booleans(),
}
valid_completions = st.fixed_dictionaries(
    {"model": st.just(EDGE_MODEL), "prompt": st.text(min_size=1, max_size=20) | st.lists(token, min_size=1, max_size=12),
     "max_tokens": st.integers(1, 3)}, optional=valid_options)
endpoints = st.sampled_from(["/v1/completions", "/v1/chat/completions"])


def check(r: httpx.Response, seen: dict) -> None:
    seen[r.status_code] = seen.get(r.status_code, 0) + 1
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]
        assert err["param"] is None or isinstance(err["param"], str)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert '"error"' not in r.text and r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


class Background:
    """Greedy requests sent in a loop while the fuzzer runs; each answer must equal its baseline."""

    PROMPTS = [[1] + [4 + (7 * i + j) % 250 for j in range(5 + 3 * i)] for i in range(4)]

    def __init__(self, url: str):
        self.url, self.stop, self.results = url, threading.Event(), []
        self.client = httpx.Client(timeout=120)
        self.baseline = [self.one(p) for p in self.PROMPTS]

    def one(self, p):
        r = self.client.post(self.url + "/v1/completions", json={"model": EDGE_MODEL, "prompt": p, "max_tokens": 6,
                                                                 "temperature": 0, "ignore_eos": True})
        return r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text

    def run(self):
        i = 0
        while not self.stop.is_set():
            self.results.append((i % 4, self.one(self.PROMPTS[i % 4])))
            i += 1


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def test_fuzzed_bodies_never_5xx_and_never_alter_concurrent_requests(edge_server):
    srv, eng = edge_server
    bg = Background(srv.url)
    assert all(s == 200 for s, _ in bg.baseline)
    t = threading.Thread(target=bg.run, daemon=True)
    t.start()
    client = httpx.Client(timeout=60)
    seen = {"n": 0}
    status: dict[int, int] = {}

    @FUZZ
    @given(st.one_of(st.tuples(endpoints, st.one_of(completion_bodies, chat_bodies)),
                     st.tuples(st.just("/v1/completions"), valid_completions)))
    def schema(case):
        path, body = case
        seen["n"] += 1
        check(client.post(srv.url + path, content=json.dumps(body), headers={"content-type": "application/json"}), status)

    @settings(FUZZ, max_examples=80)
    @given(endpoints, st.one_of(st.binary(max_size=120), json_values.map(lambda v: json.dumps(v).encode()),
                                st.tuples(completion_bodies, st.integers(0, 200), st.binary(min_size=1, max_size=3)).map(
                                    lambda x: (lambda b: b[:x[1]] + x[2] + b[x[1]:])(json.dumps(x[0]).encode()))))
    def raw(path, body):
        seen["n"] += 1
        check(client.post(srv.url + path, content=body, headers={"content-type": "application/json"}), status)

    try:
        schema()
        raw()
    finally:
        bg.stop.set()
        t.join(timeout=60)
    assert seen["n"] >= 200 and len(bg.results) >= 4
    assert status.get(200, 0) >= 10 and status.get(400, 0) >= 100, status  # both sides of the edge were reached
    assert all(res == bg.baseline[k] for k, res in bg.results)
    deadline = time.monotonic() + 30
    while eng.num_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0 and eng.crashed_steps == 0
    assert eng.failed_steps == 0 and eng.metrics.api_errors.labels("500", "internal_error")._value.get() == 0
