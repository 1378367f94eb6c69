"""Quality metrics per the protocol: perplexity, KL divergence and top-1 agreement vs a parent.

Perplexity: non-overlapping windows (default 512) over the first N tokens, each window scored on
its own, so a window of L tokens predicts L-1 of them (8192 tokens / 512 -> 8176 predictions).

KLD(parent || candidate) and top-1 agreement need the parent's full distribution at every
position. Storing fp32 logits for 8192 positions x a 49k vocabulary is 1.6 GB, so the parent
`Reference` keeps what produces them instead: the hidden states entering the output head and a
copy of the head's weight. Recomputing `F.linear(hidden, W)` is the same op on the same inputs
as the parent's own head, so the parent's logits are reproduced exactly, for ~2 % of the memory.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from sizewise.evaluate.data import DEFAULT_WINDOW, windows

ProgressFn = Callable[[int, int], None]  # (windows done, windows total)


@dataclass
class Quality:
    """One model's scores on one token stream. kld/top1 are None without a parent."""

    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    n_tokens: int  # tokens read
    n_predicted: int  # tokens scored (n_tokens minus one per window)
    n_windows: int
    window: int
    kld: float | None = None  # mean KL(parent || candidate), nats per token
    kld_max: float | None = None
    top1: float | None = None  # fraction of positions where both argmaxes agree

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Reference:
    """What a parent needs to leave behind so candidates can be compared to it later."""

    window: int
    windows: list[list[int]]
    hidden: list[torch.Tensor] = field(repr=False)  # per window [L, H] inputs of the output head
    head_weight: torch.Tensor | None = field(repr=False, default=None)
    head_bias: torch.Tensor | None = field(repr=False, default=None)
    logits: list[torch.Tensor] | None = field(repr=False, default=None)  # fallback when no head hook works
    quality: Quality | None = None

    def parent_logits(self, i: int) -> torch.Tensor:
        if self.logits is not None:
            return self.logits[i]
        return F.linear(self.hidden[i], self.head_weight, self.head_bias)


def _forward_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits [L, V] in fp32 for one window scored on its own (no cache)."""
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].float()


def _nll_sum(logits: torch.Tensor, ids: list[int]) -> float:
    """Summed NLL of ids[1:] given logits[:-1]."""
    target = torch.tensor(ids[1:], dtype=torch.long)
    return F.cross_entropy(logits[:-1].float(), target, reduction="sum").item()


def _quality(nll_sum: float, n_pred: int, n_tokens: int, n_windows: int, window: int) -> Quality:
    nll = nll_sum / n_pred
    return Quality(ppl=math.exp(nll), nll=nll, n_tokens=n_tokens, n_predicted=n_pred,
                   n_windows=n_windows, window=window)


@torch.inference_mode()
def perplexity(model, tokens: Sequence[int], window: int = DEFAULT_WINDOW,
               progress: ProgressFn | None = None) -> Quality:
    """Perplexity over non-overlapping windows, each scored on its own."""
    ws = windows(tokens, window)
    total, n_pred = 0.0, 0
    for i, w in enumerate(ws):
        total += _nll_sum(_forward_logits(model, w), w)
        n_pred += len(w) - 1
        if progress:
            progress(i + 1, len(ws))
    return _quality(total, n_pred, len(tokens), len(ws), window)


def _output_head(model):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    softcap = getattr(cfg, "final_logit_softcapping", None) or getattr(
        getattr(cfg, "text_config", None), "final_logit_softcapping", None)
    if head is None or softcap or type(head) is not torch.nn.Linear:
        return None  # logits are not a plain Linear of the captured input: store logits instead
    return head


@torch.inference_mode()
def build_reference(model, tokens: Sequence[int], window: int = DEFAULT_WINDOW,
                    progress: ProgressFn | None = None) -> Reference:
    """Score the parent (perplexity) and keep what reproduces its logits for KLD / top-1."""
    ws = windows(tokens, window)
    head = _output_head(model)
    captured: list[torch.Tensor] = []
    handle = None
    if head is not None:
        handle = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0][0].detach().clone()))
    hidden: list[torch.Tensor] = []
    logits_store: list[torch.Tensor] | None = None if head is not None else []
    total, n_pred = 0.0, 0
    try:
        for i, w in enumerate(ws):
            logits = _forward_logits(model, w)
            total += _nll_sum(logits, w)
            n_pred += len(w) - 1
            if head is not None:
                hidden.append(captured.pop())
            else:
                logits_store.append(logits)
            if progress:
                progress(i + 1, len(ws))
    finally:
        if handle is not None:
            handle.remove()
    ref = Reference(window=window, windows=ws, hidden=hidden, logits=logits_store,
                    quality=_quality(total, n_pred, len(tokens), len(ws), window))
    if head is not None:
        ref.head_weight = head.weight.detach().clone()
        ref.head_bias = None if head.bias is None else head.bias.detach().clone()
    return ref


def kld_top1(parent_logits: torch.Tensor, cand_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position KL(parent || candidate) in nats and top-1 agreement (bool), both [L]."""
    p_log = F.log_softmax(parent_logits.float(), dim=-1)
    q_log = F.log_softmax(cand_logits.float(), dim=-1)
    kld = (p_log.exp() * (p_log - q_log)).sum(dim=-1).clamp(min=0.0)
    agree = parent_logits.argmax(dim=-1) == cand_logits.argmax(dim=-1)
    return kld, agree


@torch.inference_mode()
def compare(model, ref: Reference, progress: ProgressFn | None = None) -> Quality:
    """Perplexity of `model` plus KLD and top-1 agreement against the parent, on the same tokens.

    KLD and top-1 are taken at the positions that predict a token (all but the last of each
    window), the same positions perplexity scores.
    """
    total, n_pred = 0.0, 0
    kld_sum, kld_max, agree_sum = 0.0, 0.0, 0
    n_tokens = ref.quality.n_tokens if ref.quality else sum(len(w) for w in ref.windows)
    for i, w in enumerate(ref.windows):
        logits = _forward_logits(model, w)
        total += _nll_sum(logits, w)
        n_pred += len(w) - 1
        kld, agree = kld_top1(ref.parent_logits(i)[:-1], logits[:-1])
        kld_sum += kld.sum().item()
        kld_max = max(kld_max, kld.max().item())
        agree_sum += int(agree.sum().item())
        if progress:
            progress(i + 1, len(ref.windows))
    q = _quality(total, n_pred, n_tokens, len(ref.windows), ref.window)
    q.kld, q.kld_max, q.top1 = kld_sum / n_pred, kld_max, agree_sum / n_pred
    return q


def iter_window_logits(model, tokens: Sequence[int], window: int = DEFAULT_WINDOW) -> Iterator[torch.Tensor]:
    """Per-window fp32 logits, for callers that want their own statistic."""
    with torch.inference_mode():
        for w in windows(tokens, window):
            yield _forward_logits(model, w)
