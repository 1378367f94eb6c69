"""Validation at the edge (sizewise/serve/validate.py): each bad field is a 400 (413 for size) in OpenAI's error
shape naming its param, on a live server; the reported bug (ids -5 and 10^12) no longer reaches the engine."""
import json

import httpx
import pytest

from sizewise.serve import validate
from sizewise.serve.validate import InvalidRequest, Limits

from .conftest import EDGE_BODY_LIMIT, EDGE_MODEL

LIM = Limits(EDGE_MODEL, vocab_size=260, max_model_len=512)


def post(srv, body, path="/v1/completions", **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(srv.url + path, content=content, headers={"content-type": "application/json"}, timeout=60, **kw)


def assert_error(r, status, param):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert err["param"] == param, err
    return err


def C(**kw):
    return {"model": EDGE_MODEL, "prompt": "hi", "max_tokens": 2, **kw}


def M(messages, **kw):
    return {"model": EDGE_MODEL, "messages": messages, "max_tokens": 2, **kw}


def test_the_reported_bug_body_is_a_400_and_the_engine_never_sees_it(edge_server):
    srv, eng = edge_server
    steps = eng.steps
    r = post(srv, {"model": EDGE_MODEL, "prompt": [-5, 1000000000000], "max_tokens": 2})
    err = assert_error(r, 400, "prompt")
    assert "-5" in err["message"] and "[0, 260)" in err["message"]
    assert eng.steps == steps and eng.num_active() == 0
    ok = post(srv, C(prompt=[1, 5, 259], temperature=0))
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body,param", [
    (C(prompt=[]), "prompt"), (C(prompt=""), "prompt"), (C(prompt=[1, 260]), "prompt"), (C(prompt=[1, True]), "prompt[1]"),
    (C(prompt=[1, 2.0]), "prompt[1]"), (C(prompt=[[1, 2], [3]]), "prompt"), (C(prompt=["a", "b"]), "prompt"),
    (C(prompt=[[[1]]]), "prompt[0][0]"), (C(prompt=[1, "a"]), "prompt"), (C(prompt={"a": 1}), "prompt"),
    (C(prompt="\ud800x"), "prompt"), (C(prompt=[[]]), "prompt[0]"),
    (C(max_tokens=0), "max_tokens"), (C(max_tokens=10**30), "max_tokens"), (C(max_tokens=True), "max_tokens"),
    (C(max_tokens=2.0), "max_tokens"), (C(max_tokens=511), "max_tokens"),
    (C(temperature=2.5), "temperature"), (C(temperature="1"), "temperature"), (C(temperature=True), "temperature"),
    (C(top_p=0), "top_p"), (C(top_p=1.01), "top_p"), (C(top_k=-2), "top_k"), (C(top_k=1.5), "top_k"),
    (C(presence_penalty=2.1), "presence_penalty"), (C(frequency_penalty=-3), "frequency_penalty"),
    (C(repetition_penalty=0), "repetition_penalty"), (C(repetition_penalty=10**400), "repetition_penalty"),
    (C(n=2), "n"), (C(n=0), "n"), (C(best_of=3), "best_of"), (C(seed=2**64), "seed"), (C(seed="1"), "seed"),
    (C(logprobs=1), "logprobs"), (C(logprobs=9), "logprobs"), (C(echo=True), "echo"), (C(suffix="x"), "suffix"),
    (C(stop=""), "stop"), (C(stop=["a", "b", "c", "d", "e"]), "stop"), (C(stop=["a", ""]), "stop[1]"), (C(stop=5), "stop"),
    (C(logit_bias={"300": 1}), "logit_bias"), (C(logit_bias={"x": 1}), "logit_bias"), (C(logit_bias={"5": 101}), "logit_bias"),
    (C(logit_bias=[1]), "logit_bias"), (C(stream="yes"), "stream"), (C(stream_options={"include_usage": True}), "stream_options"),
    (C(stop_token_ids=[999]), "stop_token_ids"), (C(ignore_eos=1), "ignore_eos"), (C(model=5), "model"),
    (C(model="nope"), "model"), ({"prompt": "x"}, "model"), (C(user=[]), "user"),
])
def test_bad_completion_fields(edge_server, body, param):
    assert_error(post(edge_server[0], body), 400, param)


@pytest.mark.parametrize("body,param", [
    (M([]), "messages"), (M("hi"), "messages"), (M([{"content": "x"}]), "messages[0].role"),
    (M([{"role": "wizard", "content": "x"}]), "messages[0].role"), (M([{"role": "user"}]), "messages[0].content"),
    (M([{"role": "user", "content": 5}]), "messages[0].content"),
    (M([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]), "messages[0].content[0]"),
    (M([{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
    (M([{"role": "user", "content": [{"type": "blob", "text": "x"}]}]), "messages[0].content[0].type"),
    (M([{"role": "user", "content": ["x"]}]), "messages[0].content[0]"), (M(["x"]), "messages[0]"),
    (M([{"role": "user", "content": "x"}], logprobs=True), "logprobs"),
    (M([{"role": "user", "content": "x"}], top_logprobs=30), "top_logprobs"),
    (M([{"role": "user", "content": "x"}], tools=[{"type": "function"}]), "tools"),
    (M([{"role": "user", "content": "x"}], response_format={"type": "json_object"}), "response_format"),
    (M([{"role": "user", "content": "x"}], max_completion_tokens=0), "max_completion_tokens"),
    (M([{"role": "user", "content": "w" * 600}]), "messages"),
])
def test_bad_chat_fields(edge_server, body, param):
    assert_error(post(edge_server[0], body, "/v1/chat/completions"), 400, param)


@pytest.mark.parametrize("raw,code", [
    (b'{"model": "tiny-edge", "prompt": "x", "temperature": NaN}', "invalid_json"),
    (b'{"model": "tiny-edge", "prompt": "x", "temperature": Infinity}', "invalid_json"),
    (b'{"model": "tiny-edge", "prompt": "x", "temperature": -1e999}', "invalid_json"),
    (b'{"model": "tiny-edge", "prompt": "\xff\xfe"}', "invalid_encoding"),
    (b'{"model": "tiny-edge", "prompt": "x", "seed": ' + b"9" * 5000 + b"}", "invalid_json"),
    (b"[" * 30000 + b"]" * 30000, "invalid_json"),
    (b'{"a": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "invalid_json"),
    (b"", "invalid_json"), (b"null", "invalid_json"), (b'"str"', "invalid_json"),
])
def test_bodies_that_are_not_acceptable_json(edge_server, raw, code):
    err = assert_error(post(edge_server[0], raw), 400, None)
    assert err["code"] == code


def test_body_size_limit_is_413_with_and_without_content_length(edge_server):
    srv, _ = edge_server
    big = json.dumps(C(prompt="a" * EDGE_BODY_LIMIT)).encode()
    err = assert_error(post(srv, big), 413, None)
    assert err["code"] == "body_too_large"

    def chunks():  # chunked transfer: no Content-Length, the limit is enforced while reading
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = httpx.post(srv.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert_error(r, 413, None)
    ok = post(srv, C(prompt="a" * (EDGE_BODY_LIMIT // 2 // 200)))
    assert ok.status_code == 200


def test_valid_forms_are_accepted(edge_server):
    srv, _ = edge_server
    for body in (C(prompt=["hi"]), C(prompt=[[1, 104, 105]]), C(stop=["x", "y"], logit_bias={"5": -100, "7": 100}),
                 C(presence_penalty=1.0, frequency_penalty=-1, repetition_penalty=1.2, seed=-1, top_k=-1, n=1, logprobs=None),
                 C(stream=True, stream_options={"include_usage": False}), C(unknown_field={"ignored": True})):
        r = post(srv, body)
        assert r.status_code == 200, (body, r.text)
    r = post(srv, M([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                     {"role": "assistant", "content": None}, {"role": "developer", "content": "x"}], temperature=0),
             "/v1/chat/completions")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    r = post(srv, C(stream=True, stream_options={"include_usage": False}, max_tokens=3))
    assert '"usage"' not in r.text and r.text.rstrip().endswith("data: [DONE]")


def test_unknown_paths_and_methods_are_openai_shaped(edge_server):
    srv, _ = edge_server
    r = httpx.get(srv.url + "/v1/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(srv.url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "http_405"


def test_an_unexpected_exception_is_a_counted_openai_500(edge_server, monkeypatch):
    srv, eng = edge_server
    monkeypatch.setattr(validate, "completion_request", lambda body, lim: (_ for _ in ()).throw(KeyError("boom")))
    before = eng.metrics.api_errors.labels("500", "internal_error")._value.get()
    r = post(srv, C())
    err = assert_error(r, 500, None)
    assert err["code"] == "internal_error" and "Traceback" not in r.text and "KeyError" in err["message"]
    assert eng.metrics.api_errors.labels("500", "internal_error")._value.get() == before + 1
    assert "sizewise_api_errors_total" in httpx.get(srv.url + "/metrics").text


def test_validator_units():
    assert validate.depth({"a": [1, {"b": []}]}) == 4 and validate.depth(5) == 0
    with pytest.raises(InvalidRequest) as e:
        validate.parse_body(b"x" * (LIM.max_body_bytes + 1), LIM)
    assert e.value.status == 413
    v = validate.completion_request({"model": EDGE_MODEL, "prompt": [[1, 2]], "seed": 2**64 - 1, "top_k": -1}, LIM)
    assert v.prompt == [1, 2] and v.params.seed == 2**64 - 1 and v.params.top_k == 0
    p = validate.check_length(v, [1, 2], LIM, 16)
    assert p.max_tokens == 16
    v = validate.completion_request({"model": EDGE_MODEL, "prompt": "x"}, LIM)
    assert validate.check_length(v, [1] * 505, LIM, 16).max_tokens == 7  # default capped by the context
