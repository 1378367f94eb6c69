"""A bounded load generator for a localhost server: a fixed list of requests at a fixed concurrency.

Each request is a streamed /v1/completions call with token-id prompts (no re-tokenization
differences between runs) and ignore_eos, so every request produces exactly max_tokens and
the work is the same as the generate() baselines. Some requests can be cancelled (the client
gives up before any answer) or disconnected mid-stream, to exercise the engine's cleanup.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Awaitable, Callable, TypeVar
from dataclasses import dataclass, field

import httpx

from sizewise.errors import SizewiseError

T = TypeVar("T")


@dataclass
class Req:
    prompt_ids: list[int]
    max_tokens: int
    action: str = "complete"  # complete | cancel | disconnect


@dataclass
class Result:
    ok: bool
    action: str
    status: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None


def corpus_ids(tokenizer, max_tokens: int = 20000) -> list[int]:
    """Python's own documentation prose (DESIGN.md's default corpus), tokenized without special tokens."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))[: max_tokens * 6]
    return tokenizer.encode(text, add_special_tokens=False)[:max_tokens]


def mixed_workload(tokenizer, n: int, max_tokens: int, seed: int = 0, cancel_frac: float = 0.0,
                   disconnect_frac: float = 0.0, long_prompts: bool = True) -> list[Req]:
    """Mixed lengths: 50 % short prompts (8-32 tokens), 35 % medium (64-160), 15 % long (256-400);
    max_tokens uniform in [max(1, max_tokens // 4), max_tokens]."""
    ids = corpus_ids(tokenizer)
    rng = random.Random(seed)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    out = []
    for i in range(n):
        u = rng.random()
        if u < 0.5 or not long_prompts:
            L = rng.randint(8, 32)
        elif u < 0.85:
            L = rng.randint(64, 160)
        else:
            L = rng.randint(256, 400)
        start = rng.randint(0, len(ids) - L - 1)
        mt = rng.randint(max(1, max_tokens // 4), max_tokens)
        v = rng.random()
        action = "cancel" if v < cancel_frac else ("disconnect" if v < cancel_frac + disconnect_frac else "complete")
        out.append(Req(bos + ids[start:start + L], mt, action))
    return out


async def _one(client: httpx.AsyncClient, url: str, model: str, req: Req) -> Result:
    body = {"model": model, "prompt": req.prompt_ids, "max_tokens": req.max_tokens, "temperature": 0,
            "stream": req.action != "cancel", "ignore_eos": True}
    t0 = time.perf_counter()
    if req.action == "cancel":  # give up before the answer: the server sees the connection close
        try:
            await asyncio.wait_for(client.post(url, json=body), timeout=0.05)
        except (asyncio.TimeoutError, httpx.HTTPError):
            pass
        return Result(True, "cancel")
    res = Result(False, req.action)
    last = None
    try:
        async with client.stream("POST", url, json=body) as r:
            res.status = r.status_code
            if r.status_code != 200:
                res.error = (await r.aread()).decode()[:200]
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    res.error = obj["error"]["message"]
                    return res
                now = time.perf_counter()
                if obj.get("choices"):
                    if res.ttft_s is None:
                        res.ttft_s = now - t0
                    elif last is not None:
                        res.itl_s.append(now - last)
                    last = now
                    if req.action == "disconnect":
                        res.ok = True
                        return res  # leaving the block closes the connection mid-stream
                if obj.get("usage"):
                    res.tokens = obj["usage"]["completion_tokens"]
        res.e2e_s = time.perf_counter() - t0
        res.ok = res.tokens == req.max_tokens
        if not res.ok:
            res.error = f"got {res.tokens} tokens, wanted {req.max_tokens}"
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


async def drive(base_url: str, reqs: list, concurrency: int, one: Callable[[httpx.AsyncClient, str, object], Awaitable[T]],
                duration_s: float = math.inf, timeout_s: float = 600.0) -> tuple[list[T], float]:
    """`concurrency` workers take requests off one queue and await `one(client, url, req)` each, until the queue is
    empty or duration_s passes; returns the results and the wall seconds. Both load generators (token-id prompts
    here, text prompts for the peers in openai_load.py) drive their servers through this."""
    if not base_url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise SizewiseError(f"bench-serve only loads localhost servers (got {base_url})")
    url = base_url + "/v1/completions"
    queue: asyncio.Queue = asyncio.Queue()
    for r in reqs:
        queue.put_nowait(r)
    results: list[T] = []
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        async def worker():
            while time.perf_counter() < deadline:
                try:
                    r = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await one(client, url, r))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return results, wall


async def _run(base_url: str, model: str, reqs: list[Req], concurrency: int, duration_s: float) -> tuple[list[Result], float]:
    return await drive(base_url, reqs, concurrency, lambda client, url, r: _one(client, url, model, r), duration_s)


def run_load(base_url: str, model: str, reqs: list[Req], concurrency: int, duration_s: float = 3600.0) -> tuple[list[Result], float]:
    """Send reqs with `concurrency` clients until all are done or duration_s passes; returns results and wall seconds."""
    return asyncio.run(_run(base_url, model, reqs, concurrency, duration_s))


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(results: list[Result], wall_s: float) -> dict:
    done = [r for r in results if r.action == "complete"]
    ok = [r for r in done if r.ok]
    toks = sum(r.tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    itl = [x for r in ok for x in r.itl_s]
    return {
        "requests": len(results), "completed_ok": len(ok), "failed": len(done) - len(ok),
        "cancelled": sum(r.action == "cancel" for r in results), "disconnected": sum(r.action == "disconnect" for r in results),
        "errors": [r.error for r in done if not r.ok][:5],
        "wall_s": wall_s, "output_tokens": toks, "tokens_per_s": toks / wall_s if wall_s else 0.0,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "ttft_s": {f"p{q}": percentile(ttft, q / 100) for q in (50, 95, 99)},
        "latency_s": {f"p{q}": percentile(e2e, q / 100) for q in (50, 95, 99)},
        "itl_s": {f"p{q}": percentile(itl, q / 100) for q in (50, 95, 99)},
    }


def run_load_subprocess(base_url: str, model: str, reqs: list[Req], concurrency: int,
                        duration_s: float = 3600.0) -> tuple[list[Result], float]:
    """run_load in a separate Python process (JSON over stdin/stdout), so the client's event loop does not
    compete with the engine thread for this process's GIL: the server is measured, not the load generator."""
    import dataclasses
    import subprocess
    import sys

    job = {"url": base_url, "model": model, "concurrency": concurrency, "duration_s": duration_s,
           "requests": [dataclasses.asdict(r) for r in reqs]}
    p = subprocess.run([sys.executable, "-m", "sizewise.serve.loadgen"], input=json.dumps(job), capture_output=True,
                       text=True, timeout=duration_s + 600)
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed: {p.stderr.strip().splitlines()[-1:] or p.returncode}")
    out = json.loads(p.stdout)
    return [Result(**r) for r in out["results"]], out["wall_s"]


def _main() -> None:
    import dataclasses
    import sys

    job = json.loads(sys.stdin.read())
    reqs = [Req(**r) for r in job["requests"]]
    results, wall = run_load(job["url"], job["model"], reqs, job["concurrency"], job["duration_s"])
    sys.stdout.write(json.dumps({"wall_s": wall, "results": [dataclasses.asdict(r) for r in results]}))


if __name__ == "__main__":
    _main()
