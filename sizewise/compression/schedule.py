"""Progressive pruning: raise sparsity in steps, fine-tune with fixed masks between steps.

Each step prunes to the next level with the same criterion, never reviving a weight pruned
earlier (the previous mask is passed down), then runs recovery fine-tuning. One-shot pruning
is the same call with a single step and no recovery, for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from sizewise.compression.prune import Pattern, mask_sparsity, prune_model
from sizewise.compression.recovery import RecoveryConfig, recover
from sizewise.errors import SizewiseError


@dataclass
class StepLog:
    step: int
    sparsity: float  # measured over the pruned tensors
    loss_start: float | None = None  # mean of the first recovery losses
    loss_end: float | None = None  # mean of the last recovery losses
    ppl: float | None = None  # optional quick perplexity after recovery


@dataclass
class ScheduleResult:
    masks: dict[str, torch.Tensor]
    log: list[StepLog] = field(default_factory=list)


def levels(target: float, step: float = 0.1, start: float | None = None) -> list[float]:
    """0 -> target in increments of `step` (first level = `start` or `step`); last level = target."""
    if not (0 < step <= 1):
        raise SizewiseError(f"schedule step {step} must be in (0, 1]: e.g. 0.1")
    out, s = [], (start if start is not None else step)
    while s < target - 1e-9:
        out.append(round(s, 6))
        s += step
    return out + [target]


def progressive_prune(model: nn.Module, method: str, target: Pattern, calib: torch.Tensor | None,
                      train_ids: torch.Tensor, step: float = 0.1, start: float | None = None,
                      recovery: RecoveryConfig = RecoveryConfig(), teacher: nn.Module | None = None,
                      evaluate: Callable[[nn.Module], float] | None = None,
                      on_step: Callable[[StepLog], None] | None = None,
                      progress: Callable[[str, int, int], None] | None = None,
                      previous: dict[str, torch.Tensor] | None = None, **prune_kw) -> ScheduleResult:
    """Prune to `target` (unstructured) in steps; recovery fine-tuning after every step.
    `previous`: masks of an earlier run to continue from (pruned weights stay pruned)."""
    if target.is_nm:
        raise SizewiseError("the progressive schedule raises an unstructured sparsity step by step; "
                            "for N:M use the one-shot mode (drop --schedule progressive)")
    masks = previous
    res = ScheduleResult(masks={})
    offset = 0
    lv = levels(target.sparsity, step, start)
    for i, s in enumerate(lv, 1):
        pcb = (lambda d, t, s=s: progress(f"prune {s:.0%}", d, t)) if progress else None
        masks = prune_model(model, method, Pattern(s), calib, previous=masks, progress=pcb, **prune_kw)
        rcb = (lambda d, l, s=s: progress(f"recover {s:.0%}", d, recovery.steps)) if progress else None
        losses = recover(model, masks, train_ids, recovery, teacher=teacher, on_step=rcb, start=offset)
        offset += recovery.steps * recovery.batch
        k = max(1, len(losses) // 4)
        row = StepLog(i, mask_sparsity(masks),
                      sum(losses[:k]) / k if losses else None, sum(losses[-k:]) / k if losses else None)
        if evaluate:
            row.ppl = evaluate(model)
        res.log.append(row)
        if on_step:
            on_step(row)
    res.masks = masks or {}
    return res
