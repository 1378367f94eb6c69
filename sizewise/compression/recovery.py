"""Recovery fine-tuning after pruning: masks stay fixed, only kept weights learn.

Loss: causal-LM cross-entropy on training text (disjoint from the evaluation text: evaluation
is the first 8192 corpus tokens, training/calibration comes from tokens after 16384), plus an
optional knowledge-distillation term KL(teacher || student) against the parent's logits.
Masks are held two ways: gradients of pruned weights are zeroed before each step and the masks
are re-applied after it (AdamW's decoupled weight decay and momentum could otherwise move them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sizewise.compression.prune import apply_masks
from sizewise.errors import SizewiseError


@dataclass
class RecoveryConfig:
    steps: int = 20  # optimizer steps per call
    lr: float = 5e-5
    batch: int = 1  # sequences per step (each row of the training tensor is one sequence)
    kd_weight: float = 0.0  # 0 = plain LM loss; 1 = pure distillation
    temperature: float = 1.0
    train: str = "pruned"  # which weights learn: 'pruned' (the masked Linears), 'all', or 'params' (given)


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    s = F.log_softmax(student[:, :-1].float() / t, dim=-1)
    p = F.log_softmax(teacher[:, :-1].float() / t, dim=-1)
    return (p.exp() * (p - s)).sum(-1).mean() * (t * t)


def recover(model: nn.Module, masks: dict[str, torch.Tensor], train_ids: torch.Tensor,
            cfg: RecoveryConfig = RecoveryConfig(), teacher: nn.Module | None = None,
            on_step: Callable[[int, float], None] | None = None, start: int = 0,
            params: list[nn.Parameter] | None = None) -> list[float]:
    """Fine-tune `model` in place for cfg.steps; returns the per-step losses.

    train_ids: LongTensor [n_seq, seq_len]; steps cycle through it from row `start`.
    teacher: the dense parent (needed when cfg.kd_weight > 0).
    params: what learns when cfg.train == 'params' (e.g. shared bases; masks may then be empty).
    """
    if train_ids.ndim != 2 or train_ids.shape[1] < 2 or train_ids.shape[0] < 1:
        raise SizewiseError("recovery needs training text: at least one sequence of 2+ tokens (use a longer --train-file)")
    if cfg.kd_weight > 0 and teacher is None:
        raise SizewiseError("knowledge distillation needs the parent model as teacher")
    if cfg.steps <= 0:
        return []
    mods = dict(model.named_modules())
    if cfg.train == "params":
        if not params:
            raise ValueError("cfg.train='params' needs the params to train")
    elif cfg.train == "pruned":
        params = [mods[n].weight for n in masks]
    else:
        params = [p for p in model.parameters() if p.is_floating_point()]
    was_grad = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    hooks = [mods[n].weight.register_hook(lambda g, m=m: g * m.to(g.dtype)) for n, m in masks.items()
             if mods[n].weight.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for step in range(cfg.steps):
            rows = [(start + step * cfg.batch + j) % train_ids.shape[0] for j in range(cfg.batch)]
            ids = train_ids[rows]
            logits = model(input_ids=ids, use_cache=False).logits
            loss = _lm_loss(logits, ids) if cfg.kd_weight < 1 else logits.new_zeros(())
            if cfg.kd_weight > 0:
                with torch.no_grad():
                    t_logits = teacher(input_ids=ids, use_cache=False).logits
                loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * _kd_loss(logits, t_logits, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks(model, masks)
            losses.append(float(loss.detach()))
            if on_step:
                on_step(step + 1, losses[-1])
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(was_grad.get(id(p), False))
            p.grad = None
        model.train(was_training)
    return losses
