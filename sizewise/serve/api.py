"""OpenAI-compatible HTTP API over an Engine: completions, chat completions (with SSE streaming),
models, health (with alerts) and Prometheus metrics.

Every bad request gets an OpenAI-style error object {"error": {message, type, param, code}}:
400 for malformed JSON, wrong types, unknown model, prompts too long or max_tokens out of range;
429 with Retry-After when the queue is full; 503 while shutting down. A client that disconnects
mid-request has its request cancelled, which frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import Literal, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sizewise.serve.engine import BadRequest, Completion, Engine, EngineStopped, QueueFull
from sizewise.serve.sampling import SamplingParams


class _Common(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    ignore_eos: bool = False
    stream_options: dict | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[int], list[str]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   etype: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype, "param": param, "code": code}},
                        status_code=status, headers=headers)


class _HTTPError(Exception):
    def __init__(self, response: JSONResponse):
        self.response = response


async def _parse(request: Request, cls: type[BaseModel]):
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _HTTPError(error_response(400, f"request body is not valid JSON: {e}", code="invalid_json"))
    if not isinstance(body, dict):
        raise _HTTPError(error_response(400, "request body must be a JSON object", code="invalid_json"))
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err["loc"]) or None
        raise _HTTPError(error_response(400, f"{param}: {err['msg']}", param=param, code="invalid_value"))


def create_app(engine: Engine, model_name: str, *, drain_s: float = 30.0, own_engine: bool = True) -> FastAPI:
    """The FastAPI app. With own_engine the app starts the engine on start-up and shuts it down on exit."""

    @asynccontextmanager
    async def lifespan(app):
        if own_engine:
            engine.start()
        try:
            yield
        finally:
            if own_engine:
                await asyncio.to_thread(engine.shutdown, drain_s)

    app = FastAPI(title="sizewise serve", lifespan=lifespan)
    tok = engine.tokenizer

    @app.exception_handler(_HTTPError)
    async def _http_error(_req, exc: _HTTPError):
        return exc.response

    def _params(r: _Common, default_max: int, n_prompt: int) -> SamplingParams:
        if r.model != model_name:
            raise _HTTPError(error_response(400, f"model {r.model!r} is not served here; this server serves {model_name!r}",
                                            param="model", code="model_not_found"))
        mt = r.max_tokens or r.max_completion_tokens or max(1, min(default_max, engine.max_model_len - n_prompt))
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        return SamplingParams(max_tokens=mt, temperature=r.temperature, top_p=r.top_p, top_k=max(r.top_k, 0),
                              seed=r.seed, stop=stop, ignore_eos=r.ignore_eos)

    def _submit(ids: list[int], params: SamplingParams):
        try:
            return engine.submit(ids, params, loop=asyncio.get_running_loop())
        except BadRequest as e:
            raise _HTTPError(error_response(400, str(e), param=e.param, code="invalid_value"))
        except QueueFull as e:
            raise _HTTPError(error_response(429, f"{e}; retry later", code="queue_full", etype="rate_limit_error",
                                            headers={"Retry-After": "1"}))
        except EngineStopped as e:
            raise _HTTPError(error_response(503, str(e), code="shutting_down", etype="server_error"))

    async def _collect(request: Request, handle) -> Completion | None:
        """Wait for the whole completion; cancel it if the client goes away first."""
        parts, ids, last = [], [], None

        async def consume():
            nonlocal last
            async for d in handle.stream():
                parts.append(d.text)
                ids.extend(d.token_ids)
                last = d

        task = asyncio.create_task(consume())
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if not done and await request.is_disconnected():
                    engine.abort(handle.request_id, "disconnected")
                    await task
                    return None
        except asyncio.CancelledError:
            engine.abort(handle.request_id, "disconnected")
            raise
        return Completion("".join(parts), ids, last.finish_reason, last.prompt_tokens, last.completion_tokens)

    def _usage(p: int, c: int) -> dict:
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def _stream(handle, make_chunk, usage_chunk):
        finished = False
        try:
            async for d in handle.stream():
                if d.finish_reason == "error":
                    yield _sse({"error": {"message": "generation failed", "type": "server_error", "param": None, "code": "engine_error"}})
                    finished = True
                    break
                if d.text or d.finish_reason:
                    yield _sse(make_chunk(d.text, d.finish_reason))
                if d.finish_reason:
                    finished = True
                    yield _sse(usage_chunk(d.prompt_tokens, d.completion_tokens))
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # client disconnected (generator closed or cancelled): free the request's blocks
                engine.abort(handle.request_id, "disconnected")

    def _envelope(rid: str, obj: str, created: int, choices: list, **extra) -> dict:
        return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices, **extra}

    async def _reply(request: Request, handle, stream: bool, rid: str, created: int, chunk_object: str, chunk,
                     obj: str, choice):
        """The tail both endpoints share: an SSE stream ending in a usage chunk, or the collected
        completion (499 when the client left, 500 when generation failed)."""
        if stream:
            def usage(p, c):
                return _envelope(rid, chunk_object, created, [], usage=_usage(p, c))

            return StreamingResponse(_stream(handle, chunk, usage), media_type="text/event-stream")
        c = await _collect(request, handle)
        if c is None:
            return Response(status_code=499)
        if c.finish_reason == "error":
            return error_response(500, "generation failed", code="engine_error", etype="server_error")
        return _envelope(rid, obj, created, [choice(c)], usage=_usage(c.prompt_tokens, c.completion_tokens))

    @app.post("/v1/completions")
    async def completions(request: Request):
        r = await _parse(request, CompletionRequest)
        if isinstance(r.prompt, str):
            ids = tok.encode(r.prompt)
        elif r.prompt and all(isinstance(x, int) for x in r.prompt):
            ids = list(r.prompt)
        elif len(r.prompt) == 1:
            ids = tok.encode(r.prompt[0])
        else:
            return error_response(400, "send one prompt per request (a string or a list of token ids)", param="prompt", code="invalid_value")
        params = _params(r, 16, len(ids))
        handle = _submit(ids, params)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text, fr):
            return _envelope(rid, "text_completion", created,
                             [{"index": 0, "text": text, "logprobs": None, "finish_reason": fr}])

        return await _reply(request, handle, r.stream, rid, created, "text_completion", chunk, "text_completion",
                            lambda c: {"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        r = await _parse(request, ChatRequest)
        if not getattr(tok, "chat_template", None):
            return error_response(400, "this model's tokenizer has no chat template: use /v1/completions", code="no_chat_template")
        msgs = [m.model_dump() for m in r.messages]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
        params = _params(r, 256, len(ids))
        handle = _submit(ids, params)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        sent_role = False

        def chunk(text, fr):
            nonlocal sent_role
            delta = {"content": text}
            if not sent_role:
                delta["role"], sent_role = "assistant", True
            return _envelope(rid, "chat.completion.chunk", created,
                             [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}])

        return await _reply(request, handle, r.stream, rid, created, "chat.completion.chunk", chunk, "chat.completion",
                            lambda c: {"index": 0, "message": {"role": "assistant", "content": c.text},
                                       "logprobs": None, "finish_reason": c.finish_reason})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "sizewise",
                                            "max_model_len": engine.max_model_len}]}

    @app.get("/health")
    async def health():
        st = engine.stats()
        alerts = [a.as_dict() for a in engine.alerts]
        body = {"status": "ok" if engine.accepting else "draining", "model": model_name, "engine": st,
                "alerts": alerts, "alerting": [a["name"] for a in alerts if a["level"] == "alert"]}
        return JSONResponse(body, status_code=200 if engine.accepting else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
