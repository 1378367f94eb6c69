"""OpenAI-compatible HTTP API over an Engine: completions, chat completions (with SSE streaming),
models, health (with alerts) and Prometheus metrics.

Every bad request gets an OpenAI-style error object {"error": {message, type, param, code}}: each field is
checked by sizewise/serve/validate.py before the engine sees it (400 naming the param; 413 for a body over
max_body_bytes); 429 with Retry-After when the queue is full; 503 while shutting down; and anything
unexpected is a counted, OpenAI-shaped 500 without a stack trace. A client that disconnects
mid-request has its request cancelled, which frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from sizewise.serve import validate
from sizewise.serve.engine import BadRequest, Completion, Engine, EngineStopped, QueueFull
from sizewise.serve.sampling import SamplingParams
from sizewise.serve.validate import InvalidRequest, Limits

log = logging.getLogger("sizewise.serve")


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   etype: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    # backslashreplace: a message may quote user text, and a lone surrogate there must not turn a 400 into a 500
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": {"message": message, "type": etype, "param": param, "code": code}},
                        status_code=status, headers=headers)


class _HTTPError(Exception):
    def __init__(self, response: JSONResponse):
        self.response = response


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass `limit` (from Content-Length, or while streaming
    a chunked upload), so an oversized body is never held in memory whole."""
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise InvalidRequest(f"request body is {int(cl)} bytes; this server accepts at most {limit}",
                             code="body_too_large", status=413)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise InvalidRequest(f"request body is over {limit} bytes, the most this server accepts",
                                 code="body_too_large", status=413)
    return bytes(buf)


def create_app(engine: Engine, model_name: str, *, drain_s: float = 30.0, own_engine: bool = True,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """The FastAPI app. With own_engine the app starts the engine on start-up and shuts it down on exit."""
    limits = Limits(model_name, engine.vocab_size, engine.max_model_len, max_body_bytes)

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

    def fail(status: int, message: str, param: str | None = None, code: str | None = None,
             etype: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
        engine.metrics.api_errors.labels(str(status), str(code)).inc()
        return error_response(status, message, param, code, etype, headers)

    @app.exception_handler(_HTTPError)
    async def _http_error(_req, exc: _HTTPError):  # already counted by `fail`
        return exc.response

    @app.exception_handler(InvalidRequest)
    async def _invalid(_req, exc: InvalidRequest):
        return fail(exc.status, str(exc), exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(_req, exc: StarletteHTTPException):  # 404 unknown path, 405 wrong method
        return fail(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}",
                    headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # the last line: never a stack trace to the client
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        return fail(500, f"internal server error ({type(exc).__name__}); the request was not served",
                    code="internal_error", etype="server_error")

    async def _parse(request: Request, check) -> validate.Validated:
        return check(validate.parse_body(await read_body(request, max_body_bytes), limits), limits)

    def _submit(ids: list[int], params: SamplingParams):
        try:
            return engine.submit(ids, params, loop=asyncio.get_running_loop())
        except BadRequest as e:
            raise InvalidRequest(str(e), e.param)
        except QueueFull as e:
            raise _HTTPError(fail(429, f"{e}; retry later", code="queue_full", etype="rate_limit_error",
                                  headers={"Retry-After": "1"}))
        except EngineStopped as e:
            raise _HTTPError(fail(503, str(e), code="shutting_down", etype="server_error"))

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
        return Completion("".join(parts), ids, last.finish_reason, last.prompt_tokens, last.completion_tokens, last.error)

    def _usage(p: int, c: int) -> dict:
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def _stream(handle, make_chunk, usage_chunk, include_usage: bool):
        finished = False
        try:
            async for d in handle.stream():
                if d.finish_reason in ("error", "slow_consumer"):
                    finished = True
                    engine.metrics.api_errors.labels("stream", d.finish_reason).inc()
                    yield _sse({"error": {"message": d.error or "generation failed", "type": "server_error",
                                          "param": None, "code": "engine_error" if d.finish_reason == "error" else d.finish_reason}})
                    break
                if d.text or d.finish_reason:
                    yield _sse(make_chunk(d.text, d.finish_reason))
                if d.finish_reason:
                    finished = True
                    if include_usage:
                        yield _sse(usage_chunk(d.prompt_tokens, d.completion_tokens))
            yield "data: [DONE]\n\n"
        except Exception:  # headers are sent: the stream can only end with an error event, never a 500
            log.exception("stream of request %d failed", handle.request_id)
            engine.metrics.api_errors.labels("stream", "internal_error").inc()
            yield _sse({"error": {"message": "internal server error while streaming", "type": "server_error",
                                  "param": None, "code": "internal_error"}})
        finally:
            if not finished:  # client disconnected (generator closed or cancelled): free the request's blocks
                engine.abort(handle.request_id, "disconnected")

    def _envelope(rid: str, obj: str, created: int, choices: list, **extra) -> dict:
        return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices, **extra}

    async def _reply(request: Request, handle, v: validate.Validated, rid: str, created: int, chunk_object: str, chunk,
                     obj: str, choice):
        """The tail both endpoints share: an SSE stream ending in a usage chunk, or the collected
        completion (499 when the client left, 500 when generation failed)."""
        if v.stream:
            def usage(p, c):
                return _envelope(rid, chunk_object, created, [], usage=_usage(p, c))

            return StreamingResponse(_stream(handle, chunk, usage, v.include_usage), media_type="text/event-stream")
        c = await _collect(request, handle)
        if c is None:
            return Response(status_code=499)
        if c.finish_reason == "error":
            return fail(500, c.error or "generation failed", code="engine_error", etype="server_error")
        return _envelope(rid, obj, created, [choice(c)], usage=_usage(c.prompt_tokens, c.completion_tokens))

    @app.post("/v1/completions")
    async def completions(request: Request):
        v = await _parse(request, validate.completion_request)
        ids = tok.encode(v.prompt) if isinstance(v.prompt, str) else v.prompt
        handle = _submit(ids, validate.check_length(v, list(ids), limits, 16))
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text, fr):
            return _envelope(rid, "text_completion", created,
                             [{"index": 0, "text": text, "logprobs": None, "finish_reason": fr}])

        return await _reply(request, handle, v, rid, created, "text_completion", chunk, "text_completion",
                            lambda c: {"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        v = await _parse(request, validate.chat_request)
        if not getattr(tok, "chat_template", None):
            return fail(400, "this model's tokenizer has no chat template: use /v1/completions", "messages",
                        "no_chat_template")
        try:
            ids = tok.apply_chat_template(v.messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. on role order)
            raise InvalidRequest(f"the model's chat template rejected these messages: {str(e)[:200]}", "messages")
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
        handle = _submit(ids, validate.check_length(v, ids, limits, 256))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        sent_role = False

        def chunk(text, fr):
            nonlocal sent_role
            delta = {"content": text}
            if not sent_role:
                delta["role"], sent_role = "assistant", True
            return _envelope(rid, "chat.completion.chunk", created,
                             [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}])

        return await _reply(request, handle, v, rid, created, "chat.completion.chunk", chunk, "chat.completion",
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
