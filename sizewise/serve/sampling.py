"""Per-request sampling (greedy, temperature, top-k, top-p, seed) and stop-string detection.

Each request owns a torch.Generator seeded from `seed`, so a seeded request samples the same
tokens whether it runs alone or batched with others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0  # OpenAI: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI: subtracted per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # HF/vLLM: over prompt + output, positive logits divided, negative multiplied
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0 or self.logit_bias)

    @property
    def greedy(self) -> bool:
        # below 1e-5 (vLLM's epsilon) sampling is argmax anyway, and logits / 1e-300 overflow to inf -> NaN
        # probabilities (found by tests/serve/test_fuzz.py)
        return self.temperature < GREEDY_BELOW

    def generator(self) -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,))))
        return g


def adjust(logits: torch.Tensor, params: SamplingParams, prompt_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """Penalties and logit_bias on one row [vocab], before temperature (vLLM's order). Ids past the row are
    ignored: the API checks them against the embedding rows, which may outnumber the head's."""
    V = logits.numel()
    x = logits.float().clone()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted({t for t in prompt_ids + output_ids if 0 <= t < V}), dtype=torch.long)
        if seen.numel():
            v = x[seen]
            x[seen] = torch.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and output_ids:
        counts = torch.bincount(torch.tensor([t for t in output_ids if 0 <= t < V], dtype=torch.long), minlength=V)[:V]
        x -= params.frequency_penalty * counts.float() + params.presence_penalty * (counts > 0).float()
    for t, b in params.logit_bias.items():
        if 0 <= t < V:
            x[t] += b
    return x


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None,
           prompt_ids: list[int] = (), output_ids: list[int] = ()) -> int:
    """One token from one row of logits [vocab]."""
    if params.penalized:
        logits = adjust(logits, params, list(prompt_ids), list(output_ids))
    if params.greedy:
        return int(logits.argmax())
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < params.top_p  # smallest prefix whose mass reaches top_p (always keeps the first)
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter_(0, si, sp)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def find_stop(text: str, stops: list[str]) -> int:
    """Index where the earliest stop string starts in text, or -1."""
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else -1


def safe_emit_len(text: str, stops: list[str]) -> int:
    """How much of text can be streamed now: hold back a tail that could begin a stop string,
    and an incomplete UTF-8 character (the tokenizer decodes it as U+FFFD)."""
    n = len(text)
    while n > 0 and text[n - 1] == "\ufffd":
        n -= 1
    for s in stops:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[:n].endswith(s[:k]):
                n = min(n, len(text[:n]) - k)
                break
    return n
