"""bench-serve: our engine under load versus transformers baselines, measured in the same run.

(a) sequential: the same requests one at a time with generate();
(b) static padded batching: batches of N padded to the longest prompt, generating the batch's longest
    max_tokens for everyone; its KV memory is read from the returned cache tensors.
Soak mode sends many short requests with some cancelled and disconnected, then checks that no
block leaked, no request crashed and the server still answers.
"""
from __future__ import annotations

import logging
import time

import httpx
import torch

from sizewise.serve.loadgen import Req, mixed_workload, run_load_subprocess, summarize

log = logging.getLogger("sizewise.serve")


def _cache_bytes(past) -> int:
    """Bytes held by a transformers cache object (DynamicCache layers or legacy tuples)."""
    total = 0
    layers = getattr(past, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    for item in past or ():
        for t in item:
            total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def baseline_sequential(model, reqs: list[Req], progress=None) -> dict:
    """(a) one request at a time with generate(); exactly max_tokens each (min_new_tokens)."""
    toks, t0 = 0, time.perf_counter()
    for r in reqs:
        x = torch.tensor([r.prompt_ids])
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=r.max_tokens, min_new_tokens=r.max_tokens,
                       do_sample=False, pad_token_id=0)
        toks += r.max_tokens
        if progress:
            progress()
    wall = time.perf_counter() - t0
    return {"requests": len(reqs), "output_tokens": toks, "wall_s": wall, "tokens_per_s": toks / wall}


@torch.inference_mode()
def baseline_static(model, reqs: list[Req], batch: int, pad_id: int = 0, progress=None) -> dict:
    """(b) static batches of `batch`, left-padded to the longest prompt, all run to the batch's longest max_tokens."""
    useful, peak_kv, t0 = 0, 0, time.perf_counter()
    for i in range(0, len(reqs), batch):
        group = reqs[i:i + batch]
        L = max(len(r.prompt_ids) for r in group)
        mt = max(r.max_tokens for r in group)
        ids = torch.full((len(group), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), L), dtype=torch.long)
        for b, r in enumerate(group):
            ids[b, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[b, L - len(r.prompt_ids):] = 1
        out = model.generate(ids, attention_mask=mask, max_new_tokens=mt, min_new_tokens=mt, do_sample=False,
                             pad_token_id=pad_id, return_dict_in_generate=True)
        peak_kv = max(peak_kv, _cache_bytes(out.past_key_values))
        useful += sum(r.max_tokens for r in group)
        if progress:
            progress()
    wall = time.perf_counter() - t0
    return {"batch": batch, "requests": len(reqs), "output_tokens": useful, "wall_s": wall,
            "tokens_per_s": useful / wall, "peak_kv_bytes": peak_kv}


def _serve_load(engine, model_name: str, reqs: list[Req], concurrency: int, duration_s: float, url: str) -> dict:
    engine.reset_peaks()
    pre = engine.scheduler.num_preemptions
    results, wall = run_load_subprocess(url, model_name, reqs, concurrency, duration_s)
    st = engine.stats()
    s = summarize(results, wall)
    s.update({"concurrency": concurrency, "peak_kv_blocks": st["peak_kv_blocks"], "peak_kv_bytes": st["peak_kv_bytes"],
              "peak_fragmentation": st["peak_fragmentation"], "mean_fragmentation": st["mean_fragmentation"],
              "preemptions": st["preemptions"] - pre})
    return s


def _wait_idle(engine, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while engine.num_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let aborts posted by closing connections reach the loop
    return engine.num_active() == 0


def soak(engine, model_name: str, tokenizer, n: int, concurrency: int, url: str, max_tokens: int = 4,
         seed: int = 1) -> dict:
    """n short requests, 10 % cancelled and 5 % disconnected mid-stream; then check for leaks and liveness."""
    reqs = mixed_workload(tokenizer, n, max_tokens, seed=seed, cancel_frac=0.10, disconnect_frac=0.05, long_prompts=False)
    before = dict(engine.finished_by_reason)
    results, wall = run_load_subprocess(url, model_name, reqs, concurrency, duration_s=3600)
    idle = _wait_idle(engine)
    st = engine.stats()
    health = httpx.get(url + "/health", timeout=30)
    after = httpx.post(url + "/v1/completions", json={"model": model_name, "prompt": reqs[0].prompt_ids, "max_tokens": 2,
                                                      "temperature": 0, "ignore_eos": True}, timeout=60)
    fin = {k: v - before.get(k, 0) for k, v in engine.finished_by_reason.items()}
    s = summarize(results, wall)
    return {**s, "engine_idle": idle, "leaked_blocks": st["kv_leaked_blocks"], "blocks_in_use_after": st["kv_blocks_used"],
            "crashed_steps": st["crashed_steps"], "errored_requests": fin.get("error", 0), "finished_by_reason": fin,
            "health_status": health.status_code, "answers_after": after.status_code == 200
            and after.json()["usage"]["completion_tokens"] == 2}
