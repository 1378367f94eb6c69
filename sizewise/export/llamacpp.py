"""Checks of an exported GGUF in llama.cpp itself (llama-cpp-python), on the measurement protocol.

`available()` says whether the binding is installed (`make peer` builds it). Logits come from
`Llama(logits_all=True)`: each protocol window (no BOS) is evaluated on its own after a reset, like
sizewise's own perplexity, so the two are comparable token for token.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


def available() -> str | None:
    """None if llama_cpp imports, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken build raises OSError and others
        return f"llama-cpp-python is not importable ({e.__class__.__name__}: {e}); `make peer` builds it"
    return None


def open_model(path: Path, n_ctx: int = 512, threads: int = 2, logits_all: bool = True):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                 logits_all=logits_all, verbose=False)


def window_logits(llm, windows: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:
    """fp32 logits [L, V] of each window, evaluated on its own."""
    for w in windows:
        llm.reset()
        llm.eval(list(w))
        yield np.array(llm.scores[:len(w)], dtype=np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def compare(llm, windows: Sequence[Sequence[int]], reference_logits: Iterator | None = None) -> dict:
    """llama.cpp's protocol perplexity on `windows`; with `reference_logits` (an iterable of [L, V] arrays
    in window order, e.g. sizewise's), KLD(reference || llama.cpp) and top-1 agreement at the predicting
    positions."""
    nll, n, kl, kl_max, agree = 0.0, 0, 0.0, 0.0, 0
    refs = iter(reference_logits) if reference_logits is not None else None
    for w, lg in zip(windows, window_logits(llm, windows)):
        lq = _log_softmax(lg[:-1])
        nll -= float(lq[np.arange(len(w) - 1), np.asarray(w[1:])].sum())
        n += len(w) - 1
        if refs is not None:
            ref = np.asarray(next(refs), dtype=np.float32)[:-1]
            lp = _log_softmax(ref)
            k = (np.exp(lp) * (lp - lq)).sum(axis=-1).clip(min=0)
            kl += float(k.sum())
            kl_max = max(kl_max, float(k.max()))
            agree += int((ref.argmax(-1) == lg[:-1].argmax(-1)).sum())
    out = {"ppl": math.exp(nll / n), "predicted": n}
    if refs is not None:
        out.update(kld=kl / n, kld_max=kl_max, top1=agree / n)
    return out


def greedy(llm, prompt: Sequence[int], n: int) -> list[int]:
    """n greedy tokens after `prompt` (argmax of llama.cpp's logits, no sampler)."""
    llm.reset()
    llm.eval(list(prompt))
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def speed_pass(llm, prefill_ids: Sequence[int], prompt_ids: Sequence[int], steps: int) -> tuple[float, float]:
    """One timed pass in llama.cpp: prefill of `prefill_ids` (tok/s) and greedy batch-1 decode of `steps`
    tokens after `prompt_ids` (tok/s, the prompt's own evaluation off the clock)."""
    import time

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(list(prefill_ids))
    tp = time.perf_counter() - t0
    llm.reset()
    llm.eval(list(prompt_ids))
    t0 = time.perf_counter()
    for _ in range(steps):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    td = time.perf_counter() - t0
    return len(prefill_ids) / tp, steps / td

