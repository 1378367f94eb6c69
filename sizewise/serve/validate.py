"""Validation at the edge: every field of /v1/completions and /v1/chat/completions is checked here,
before anything reaches the engine (issue 16: one bad request must never hurt another).

Why by hand and not with pydantic models: each rejection must name the OpenAI parameter it is about
(`param`), say what was wanted and what came, and treat JSON's corner cases the way OpenAI's API does
(a bool is not an integer, 5.0 is not an integer, NaN is not JSON). Every failure raises
`InvalidRequest`, which the API turns into {"error": {message, type, param, code}} with its status.

What is checked (see docs/serving-isolation.md for the table):
  body      UTF-8, at most `max_body_bytes` (413), JSON without NaN/Infinity/overflowing floats,
            nesting at most `max_depth`, an object at the top
  prompt    a non-empty string; a non-empty list of token ids in [0, vocab); a list of one string or of one
            id list (OpenAI's batch forms, one prompt per request here); no lone UTF-16 surrogates
  messages  a non-empty list of {role, content}; roles system/user/assistant/tool/developer; content a
            string or a list of text parts (image/audio/file parts are refused: the model is text-only)
  numbers   temperature [0, 2], top_p (0, 1], top_k >= -1, presence/frequency penalty [-2, 2],
            repetition_penalty > 0, seed a 64-bit integer, n = best_of = 1, max_tokens >= 1 and within
            the context (checked after tokenization by `check_length`)
  others    stop (a string or up to 4 non-empty strings), logit_bias ({"<id>": -100..100}), stop_token_ids,
            stream/stream_options, and the OpenAI features this server does not have (logprobs, echo,
            suffix, tools, JSON response formats), refused with code "unsupported_parameter".
Unknown top-level keys are ignored, as vLLM does, so newer clients keep working.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from sizewise.serve.sampling import SamplingParams

ROLES = ("system", "user", "assistant", "tool", "developer")
NON_TEXT_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "file", "video_url")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
_INT_KEY = re.compile(r"-?\d{1,20}")


class InvalidRequest(ValueError):
    """A request that cannot be served as sent: the API answers `status` with OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


@dataclass(frozen=True)
class Limits:
    """What a request is checked against: the served model and this server's bounds."""

    model_name: str
    vocab_size: int  # the model's embedding rows: valid token ids are [0, vocab_size)
    max_model_len: int  # prompt + output tokens
    max_body_bytes: int = 1 << 20
    max_depth: int = 32  # JSON nesting; the deepest legal body (chat content parts) needs 5


@dataclass
class Validated:
    """A request that passed: what the API needs to tokenize it and build SamplingParams."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: the endpoint's default, capped by the context
    params: SamplingParams  # max_tokens filled in by `check_length`
    prompt: str | list[int] | None = None  # completions
    messages: list[dict] = field(default_factory=list)  # chat, content flattened to strings


def _show(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _type_name(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(v), type(v).__name__)


# -- the body ----------------------------------------------------------------------------------
def _no_constant(name: str):
    raise InvalidRequest(f"request body is not valid JSON: {name} is not a JSON number", code="invalid_json")


def _finite_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise InvalidRequest(f"request body is not valid JSON: the number {s[:40]} is out of range", code="invalid_json")
    return x


def depth(obj) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), computed without recursion."""
    best, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        kids = o.values() if isinstance(o, dict) else (o if isinstance(o, list) else None)
        if kids is None:
            continue
        best = max(best, d)
        stack.extend((k, d + 1) for k in kids if isinstance(k, (dict, list)))
    return best


def parse_body(raw: bytes, limits: Limits) -> dict:
    """Bytes -> a JSON object, or InvalidRequest (413 when over the size limit, 400 otherwise)."""
    if len(raw) > limits.max_body_bytes:
        raise InvalidRequest(f"request body is {len(raw)} bytes; this server accepts at most {limits.max_body_bytes}",
                             code="body_too_large", status=413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"request body is not UTF-8: byte {e.start} ({raw[e.start:e.start + 1]!r}) is invalid",
                             code="invalid_encoding")
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except InvalidRequest:
        raise
    except RecursionError:
        raise InvalidRequest(f"request body nests deeper than {limits.max_depth} levels", code="invalid_json")
    except ValueError as e:  # JSONDecodeError, and int() refusing more than sys.get_int_max_str_digits() digits
        raise InvalidRequest(f"request body is not valid JSON: {str(e)[:200]}", code="invalid_json")
    if depth(body) > limits.max_depth:
        raise InvalidRequest(f"request body nests deeper than {limits.max_depth} levels", code="invalid_json")
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {_type_name(body)}", code="invalid_json")
    return body


# -- field checkers ------------------------------------------------------------------------------
_MISSING = object()


def _get(body: dict, key: str, required: bool = False):
    v = body.get(key, _MISSING)
    if v is _MISSING or v is None:
        if required:
            raise InvalidRequest(f"missing required parameter {key!r}", key, "missing_required_parameter")
        return None
    return v


def _wrong_type(param: str, want: str, v) -> InvalidRequest:
    return InvalidRequest(f"{param} must be {want}, got {_type_name(v)} {_show(v)}", param, "invalid_type")


def text(v, param: str, *, allow_empty: bool = True) -> str:
    if not isinstance(v, str):
        raise _wrong_type(param, "a string", v)
    if not allow_empty and not v:
        raise InvalidRequest(f"{param} must not be empty", param)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"{param} contains a lone UTF-16 surrogate at character {e.start}", param)
    return v


def integer(body: dict, key: str, lo: int | None = None, hi: int | None = None, param: str | None = None) -> int | None:
    v = _get(body, key)
    param = param or key
    if v is None:
        return None
    if type(v) is not int:  # bool is an int subclass; 5.0 is a float: neither is an integer here
        raise _wrong_type(param, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"at least {lo}" if hi is None else (f"at most {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise InvalidRequest(f"{param} must be {rng}, got {_show(v)}", param)
    return v


def number(body: dict, key: str, lo: float, hi: float | None, *, lo_open: bool = False) -> float | None:
    v = _get(body, key)
    if v is None:
        return None
    if type(v) not in (int, float):
        raise _wrong_type(key, "a number", v)
    x = float(v) if abs(v) < 1e308 else math.inf  # an int too big for a float is out of every range
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and (hi is None or x <= hi)
    if not ok:
        lo_s = f"({lo:g}" if lo_open else f"[{lo:g}"
        rng = f"{lo_s}, {hi:g}]" if hi is not None else (f"finite and greater than {lo:g}" if lo_open else f"at least {lo:g}")
        raise InvalidRequest(f"{key} must be {'in ' if hi is not None else ''}{rng}, got {_show(v)}", key)
    return x


def boolean(body: dict, key: str) -> bool | None:
    v = _get(body, key)
    if v is not None and type(v) is not bool:
        raise _wrong_type(key, "a boolean", v)
    return v


def token_ids(v: list, param: str, vocab: int) -> list[int]:
    if not v:
        raise InvalidRequest(f"{param} is an empty list of token ids", param)
    for i, t in enumerate(v):
        if type(t) is not int:
            raise _wrong_type(f"{param}[{i}]", "an integer token id", t) from None
        if not 0 <= t < vocab:
            raise InvalidRequest(f"{param}[{i}] = {_show(t)} is not a token id of this model: ids are in [0, {vocab})", param)
    return list(v)


def prompt(v, vocab: int) -> str | list[int]:
    """OpenAI's four prompt forms; one prompt per request."""
    if isinstance(v, str):
        return text(v, "prompt", allow_empty=False)
    if not isinstance(v, list):
        raise _wrong_type("prompt", "a string or a list of token ids", v)
    if not v:
        raise InvalidRequest("prompt is an empty list", "prompt")
    kinds = {type(x) for x in v}
    if kinds <= {int, bool, float} and int in kinds:  # token ids (token_ids names a stray bool or float by index)
        return token_ids(v, "prompt", vocab)
    if kinds <= {str} or kinds <= {list}:
        if len(v) != 1:
            raise InvalidRequest(f"prompt holds {len(v)} prompts; this server takes one prompt per request "
                                 "(send them as separate requests)", "prompt", "unsupported_value")
        return prompt(v[0], vocab) if kinds == {str} else token_ids(v[0], "prompt[0]", vocab)
    bad = next(x for x in v if type(x) is not int)
    raise InvalidRequest(f"prompt must be a string, a list of token ids, or a list of one of those; it mixes "
                         f"{_type_name(bad)} {_show(bad)} in", "prompt", "invalid_type")


def stop(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [text(v, "stop", allow_empty=False)]
    if not isinstance(v, list):
        raise _wrong_type("stop", "a string or a list of strings", v)
    if len(v) > 4:
        raise InvalidRequest(f"stop takes at most 4 sequences, got {len(v)}", "stop")
    return [text(s, f"stop[{i}]", allow_empty=False) for i, s in enumerate(v)]


def logit_bias(v, vocab: int) -> dict[int, float]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _wrong_type("logit_bias", "an object mapping token ids to biases", v)
    out = {}
    for k, b in v.items():
        if not _INT_KEY.fullmatch(k) or not 0 <= int(k) < vocab:
            raise InvalidRequest(f"logit_bias key {_show(k)} is not a token id of this model: ids are in [0, {vocab})",
                                 "logit_bias")
        if type(b) not in (int, float) or not -100 <= b <= 100:
            raise InvalidRequest(f"logit_bias[{k}] must be a number in [-100, 100], got {_show(b)}", "logit_bias")
        out[int(k)] = float(b)
    return out


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param} is not supported by this server: {why}", param, "unsupported_parameter")


def message(m, i: int) -> dict:
    p = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _wrong_type(p, "an object with role and content", m)
    role = m.get("role")
    if role is None:
        raise InvalidRequest(f"{p}.role is missing", f"{p}.role", "missing_required_parameter")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(f"{p}.role must be one of {', '.join(ROLES)}; got {_show(role)}", f"{p}.role")
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None:
            text(m[key], f"{p}.{key}")
    if m.get("tool_calls"):
        raise _unsupported(f"{p}.tool_calls", "this server has no tool calling")
    c = m.get("content")
    if c is None:
        if role != "assistant":
            raise InvalidRequest(f"{p}.content is missing", f"{p}.content", "missing_required_parameter")
        c = ""
    if isinstance(c, list):
        parts = []
        for j, part in enumerate(c):
            pp = f"{p}.content[{j}]"
            if not isinstance(part, dict):
                raise _wrong_type(pp, "a content part object", part)
            kind = part.get("type")
            if kind in NON_TEXT_PARTS:
                raise InvalidRequest(f"{pp} is an {kind} part; this model is text-only, send text parts",
                                     pp, "unsupported_content")
            if kind != "text":
                raise InvalidRequest(f"{pp}.type must be 'text', got {_show(kind)}", f"{pp}.type")
            parts.append(text(part.get("text"), f"{pp}.text"))
        c = "\n".join(parts)
    else:
        c = text(c, f"{p}.content") if c is not None else ""
    return {"role": role, "content": c}


# -- whole requests ------------------------------------------------------------------------------
def _common(body: dict, limits: Limits, chat: bool) -> tuple[str, bool, bool, int | None, SamplingParams]:
    model = text(_get(body, "model", required=True), "model")
    if model != limits.model_name:
        raise InvalidRequest(f"model {_show(model)} is not served here; this server serves {limits.model_name!r}",
                             "model", "model_not_found")
    mt = integer(body, "max_tokens")
    mct = integer(body, "max_completion_tokens")
    for key, v in (("max_tokens", mt), ("max_completion_tokens", mct)):
        if v is not None and v < 1:
            raise InvalidRequest(f"{key} must be at least 1, got {v} (this server does not echo prompts)", key)
    temperature = number(body, "temperature", 0.0, 2.0)
    top_p = number(body, "top_p", 0.0, 1.0, lo_open=True)
    top_k = integer(body, "top_k", lo=-1)
    presence = number(body, "presence_penalty", -2.0, 2.0)
    frequency = number(body, "frequency_penalty", -2.0, 2.0)
    repetition = number(body, "repetition_penalty", 0.0, None, lo_open=True)
    seed = integer(body, "seed", *SEED_RANGE)
    n = integer(body, "n", lo=1, hi=128)
    if n not in (None, 1):
        raise _unsupported("n", f"one choice per request (got n={n}); send {n} requests, with different seeds")
    best_of = integer(body, "best_of", lo=1, hi=20)
    if best_of not in (None, 1):
        raise _unsupported("best_of", "one candidate per request")
    stream = boolean(body, "stream") or False
    include_usage = True
    so = _get(body, "stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise _wrong_type("stream_options", "an object", so)
        if not stream:
            raise InvalidRequest("stream_options is only allowed when stream is true", "stream_options")
        iu = boolean(so, "include_usage")
        include_usage = True if iu is None else iu
    stops = stop(_get(body, "stop"))
    bias = logit_bias(_get(body, "logit_bias"), limits.vocab_size)
    ignore_eos = boolean(body, "ignore_eos") or False
    sti = _get(body, "stop_token_ids")
    if sti is not None:
        if not isinstance(sti, list):
            raise _wrong_type("stop_token_ids", "a list of token ids", sti)
        sti = token_ids(sti, "stop_token_ids", limits.vocab_size) if sti else []
    if _get(body, "user") is not None:
        text(body["user"], "user")
    if chat:
        lp = boolean(body, "logprobs")
        tl = integer(body, "top_logprobs", 0, 20)
        if lp or tl:
            raise _unsupported("logprobs" if lp else "top_logprobs", "log probabilities are not returned")
        for key in ("tools", "functions"):
            v = _get(body, key)
            if v is not None and not isinstance(v, list):
                raise _wrong_type(key, "a list", v)
            if v:
                raise _unsupported(key, "this server has no tool calling")
        tc = _get(body, "tool_choice")
        if tc is not None and tc != "none":
            raise _unsupported("tool_choice", "this server has no tool calling (only 'none')")
        boolean(body, "parallel_tool_calls")
        rf = _get(body, "response_format")
        if rf is not None:
            if not isinstance(rf, dict):
                raise _wrong_type("response_format", "an object", rf)
            if rf.get("type") in ("json_object", "json_schema"):
                raise _unsupported("response_format", "structured (JSON) output is not enforced here")
            if rf.get("type") != "text":
                raise InvalidRequest(f"response_format.type must be 'text', got {_show(rf.get('type'))}", "response_format")
    else:
        lp = integer(body, "logprobs", 0, 5)
        if lp is not None:
            raise _unsupported("logprobs", "log probabilities are not returned")
        if boolean(body, "echo"):
            raise _unsupported("echo", "the prompt is not echoed")
        sfx = _get(body, "suffix")
        if sfx is not None and text(sfx, "suffix"):
            raise _unsupported("suffix", "there is no insertion mode")
    params = SamplingParams(
        max_tokens=0, temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p,
        top_k=max(top_k or 0, 0), seed=seed, stop=stops, stop_token_ids=sti or [], ignore_eos=ignore_eos,
        presence_penalty=presence or 0.0, frequency_penalty=frequency or 0.0,
        repetition_penalty=1.0 if repetition is None else repetition, logit_bias=bias)
    return model, stream, include_usage, mt if mt is not None else mct, params


def completion_request(body: dict, limits: Limits) -> Validated:
    model, stream, usage, mt, params = _common(body, limits, chat=False)
    p = prompt(_get(body, "prompt", required=True), limits.vocab_size)
    return Validated(model, stream, usage, mt, params, prompt=p)


def chat_request(body: dict, limits: Limits) -> Validated:
    model, stream, usage, mt, params = _common(body, limits, chat=True)
    msgs = _get(body, "messages", required=True)
    if not isinstance(msgs, list):
        raise _wrong_type("messages", "a list of messages", msgs)
    if not msgs:
        raise InvalidRequest("messages must hold at least one message", "messages")
    return Validated(model, stream, usage, mt, params, messages=[message(m, i) for i, m in enumerate(msgs)])


def check_length(v: Validated, ids: list[int], limits: Limits, default_max: int) -> SamplingParams:
    """After tokenization: the prompt fits the context with room for max_tokens; returns the final params."""
    n, ctx = len(ids), limits.max_model_len
    if n == 0:
        raise InvalidRequest("prompt is empty after tokenization", "messages" if v.messages else "prompt")
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:  # a tokenizer with more ids than the model has embedding rows
        raise InvalidRequest(f"the tokenizer produced id {bad}, which this model cannot embed (vocab {limits.vocab_size})",
                             "messages" if v.messages else "prompt")
    if n >= ctx:
        raise InvalidRequest(f"prompt has {n} tokens; this server's context is {ctx} tokens",
                             "messages" if v.messages else "prompt", "context_length_exceeded")
    mt = v.max_tokens if v.max_tokens is not None else max(1, min(default_max, ctx - n))
    if n + mt > ctx:
        raise InvalidRequest(f"prompt ({n} tokens) + max_tokens ({_show(mt, 30)}) exceeds the context of {ctx} tokens: "
                             f"lower max_tokens to at most {ctx - n}", "max_tokens", "context_length_exceeded")
    v.params.max_tokens = mt
    return v.params
