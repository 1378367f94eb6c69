"""One load client for every OpenAI-compatible server: sizewise's own and the peers (vLLM, llama.cpp).

Why a second client beside loadgen.py: loadgen sends token-id prompts and trusts `usage`, which only
sizewise and vLLM accept; llama.cpp's server takes text prompts only and its stream carries no usage.
Here every server gets the same body: a text prompt, temperature 0, streaming with
`stream_options.include_usage`, and, for fixed-length work, both `ignore_eos` (sizewise, vLLM) and
`min_tokens` = max_tokens (llama.cpp, vLLM); each server ignores the key it does not know. Completion
tokens come from `usage` when the server sends it, else from the number of streamed text chunks
(llama.cpp streams one chunk per token, and none for an end-of-text token, which sizewise's and vLLM's usage
count); `tokens_from` says which. A request is ok when its stream finished (a finish_reason or [DONE]) and,
for fixed-length work, produced exactly max_tokens.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx

from sizewise.serve.loadgen import Result, drive, mixed_workload, percentile

WORKLOADS = ("mixed", "story")
STORY_MAX_TOKENS = 64


@dataclass(frozen=True)
class TextReq:
    prompt: str
    max_tokens: int
    exact: bool  # force exactly max_tokens (ignore_eos / min_tokens): the same work on every server


def story_workload(concurrency: int) -> list[TextReq]:
    """Issue 17's workload: max(8, 2 x concurrency) story prompts, max_tokens 64, stopping where the model stops."""
    n = max(8, 2 * concurrency)
    return [TextReq(f"Write a short story about the number {i}." + " Then continue." * (i % 5), STORY_MAX_TOKENS, False)
            for i in range(n)]


def mixed_text_workload(tokenizer, n: int, max_tokens: int, seed: int = 0) -> list[TextReq]:
    """bench-serve's mixed-length workload (loadgen.mixed_workload) decoded to text, fixed lengths."""
    return [TextReq(tokenizer.decode(r.prompt_ids, skip_special_tokens=True), r.max_tokens, True)
            for r in mixed_workload(tokenizer, n, max_tokens, seed=seed)]


def request_body(model: str, req: TextReq) -> dict:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if req.exact:
        body.update(ignore_eos=True, min_tokens=req.max_tokens)
    return body


async def _one(client: httpx.AsyncClient, url: str, model: str, req: TextReq) -> tuple[Result, str]:
    """One streamed completion; returns the result and where its token count came from (usage | chunks)."""
    res, chunks, usage, last, finished = Result(False, "complete"), 0, None, None, False
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, json=request_body(model, req)) as r:
            res.status = r.status_code
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return res, "none"
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    break
                obj = json.loads(data)
                if "error" in obj:
                    res.error = str(obj["error"].get("message", obj["error"]) if isinstance(obj["error"], dict) else obj["error"])
                    return res, "none"
                if obj.get("usage"):
                    usage = obj["usage"].get("completion_tokens")
                choices = obj.get("choices") or []
                if choices and choices[0].get("finish_reason"):
                    finished = True
                if choices and choices[0].get("text"):
                    now = time.perf_counter()
                    if res.ttft_s is None:
                        res.ttft_s = now - t0
                    elif last is not None:
                        res.itl_s.append(now - last)
                    last, chunks = now, chunks + 1
        res.e2e_s = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res, "none"
    res.tokens = usage if usage is not None else chunks
    # a free-length request may stop at once (EOS first: llama.cpp streams no text for it, so 0 tokens here)
    res.ok = finished and (not req.exact or res.tokens == req.max_tokens)
    if not finished:
        res.error = f"the stream ended without a finish_reason or [DONE] after {res.tokens} tokens"
    elif not res.ok:
        res.error = f"got {res.tokens} tokens, wanted {req.max_tokens}"
    return res, "usage" if usage is not None else "chunks"


async def _run(base_url: str, model: str, reqs: list[TextReq], concurrency: int, timeout_s: float):
    return await drive(base_url, reqs, concurrency, lambda client, url, r: _one(client, url, model, r), timeout_s=timeout_s)


def run_text_load(base_url: str, model: str, reqs: list[TextReq], concurrency: int,
                  timeout_s: float = 600.0) -> dict:
    """Send `reqs` with `concurrency` clients; the summary bench-serve --peer prints for one server and level."""
    results, wall = asyncio.run(_run(base_url, model, reqs, concurrency, timeout_s))
    ok = [r for r, _ in results if r.ok]
    toks = sum(r.tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    sources = sorted({src for r, src in results if r.ok})
    return {"concurrency": concurrency, "requests": len(results), "completed_ok": len(ok), "failed": len(results) - len(ok),
            "errors": [r.error for r, _ in results if not r.ok][:5], "wall_s": wall, "output_tokens": toks,
            "tokens_per_s": toks / wall if wall else 0.0, "requests_per_s": len(ok) / wall if wall else 0.0,
            "ttft_s": {f"p{q}": percentile(ttft, q / 100) for q in (50, 95)},
            "latency_s": {f"p{q}": percentile(e2e, q / 100) for q in (50, 95)},
            "tokens_from": "+".join(sources) or "none"}
