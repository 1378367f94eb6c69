"""Pruning masks: which weights become zero, by magnitude, Wanda or SparseGPT.

Masks are bool tensors shaped like the weight (True = kept). Patterns are unstructured
(any fraction, compared per output row or per whole matrix) or N:M (N kept in every M
consecutive input columns). Criteria that need data (Wanda, SparseGPT) calibrate layer by
layer: each decoder layer sees the outputs of the already-pruned layers before it, as in
the Wanda and SparseGPT papers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sizewise.errors import SizewiseError

METHODS = ("magnitude", "wanda", "sparsegpt")
# Default targets: every Linear inside a decoder layer; never embeddings, norms or lm_head.
DEFAULT_INCLUDE = r"\.layers\.\d+\."
DEFAULT_EXCLUDE = r"(lm_head|embed|norm|router|\.gate$)"


@dataclass(frozen=True)
class Pattern:
    """Target sparsity: unstructured fraction, or N kept out of every M (2:4 = 50 %)."""

    sparsity: float
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g}"


def parse_pattern(spec: str | float) -> Pattern:
    """'0.5' -> 50 % unstructured; '2:4' -> 2 kept of every 4."""
    s = str(spec).strip()
    if ":" in s:
        try:
            n, m = (int(x) for x in s.split(":"))
        except ValueError:
            raise SizewiseError(f"bad --sparsity {s!r}: write N:M with integers, e.g. 2:4 or 4:8")
        if not (0 < n < m):
            raise SizewiseError(f"bad --sparsity {s!r}: N:M needs 0 < N < M (N weights kept in every M), e.g. 2:4")
        return Pattern(1.0 - n / m, n, m)
    try:
        f = float(s.rstrip("%")) / (100.0 if s.endswith("%") else 1.0)
    except ValueError:
        raise SizewiseError(f"bad --sparsity {s!r}: give a fraction in [0, 1) such as 0.5, or N:M such as 2:4")
    if not (0.0 <= f < 1.0):
        raise SizewiseError(f"--sparsity {s} is outside [0, 1): give the fraction of weights to remove, e.g. 0.5")
    return Pattern(f)


def check_pattern_fits(pattern: Pattern, in_features: int, name: str = "layer") -> None:
    if pattern.is_nm and in_features % pattern.m:
        raise SizewiseError(f"{pattern} does not fit {name}: M={pattern.m} must divide its input dimension {in_features}")


# ---------------------------------------------------------------- targets

def prunable_linears(model: nn.Module, include: str = DEFAULT_INCLUDE,
                     exclude: str = DEFAULT_EXCLUDE) -> dict[str, nn.Linear]:
    """Name -> Linear for the weights a pruning run touches (regexes over module names)."""
    inc, exc = re.compile(include), re.compile(exclude)
    out = {n: m for n, m in model.named_modules()
           if isinstance(m, nn.Linear) and inc.search(n) and not exc.search(n)}
    if not out:
        raise SizewiseError(f"no Linear layers match include={include!r} exclude={exclude!r}: check the patterns")
    return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the longest ModuleList in the model."""
    best = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and (best is None or len(m) > len(best)):
            best = m
    if best is None:
        raise SizewiseError("cannot find the decoder layers of this model (no ModuleList): prune it with --prune magnitude")
    return best


# ---------------------------------------------------------------- scores and masks

def magnitude_scores(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().float()


def wanda_scores(w: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 (Sun et al. 2023): weights that meet large inputs matter more."""
    return w.detach().abs().float() * act_norm.float().reshape(1, -1)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest-scoring weights in every m consecutive input columns of each row."""
    rows, cols = scores.shape
    check_pattern_fits(Pattern(1 - n / m, n, m), cols)
    g = scores.reshape(rows, cols // m, m)
    keep = torch.topk(g, n, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def unstructured_mask(scores: torch.Tensor, sparsity: float, per: str = "row") -> torch.Tensor:
    """Remove exactly round(sparsity * count) lowest scores per row ('row') or per matrix ('layer')."""
    if per not in ("row", "layer"):
        raise SizewiseError(f"unknown comparison group {per!r}: use 'row' or 'layer'")
    flat = scores if per == "row" else scores.reshape(1, -1)
    k = int(round(sparsity * flat.shape[1]))
    mask = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(flat, k, dim=1, largest=False, sorted=False).indices  # far cheaper than a full sort
        mask.scatter_(1, idx, False)
    return mask.reshape(scores.shape)


def mask_from_scores(scores: torch.Tensor, pattern: Pattern, per: str = "row",
                     keep_within: torch.Tensor | None = None) -> torch.Tensor:
    """The mask for one matrix. `keep_within` (an earlier mask) forces pruned weights to stay pruned."""
    if keep_within is not None:
        scores = scores.masked_fill(~keep_within, float("-inf"))
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
    return unstructured_mask(scores, pattern.sparsity, per)


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every weight the masks remove (called after each optimizer step in recovery)."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        w = mods[name].weight
        w.mul_(mask.to(w.dtype))


# ---------------------------------------------------------------- layer-wise calibration

class _Captured(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, calib: torch.Tensor, batch: int = 8) -> list[tuple[torch.Tensor, dict]]:
    """Run the model up to its first decoder layer; return (hidden, kwargs) per calibration batch."""
    layers = decoder_layers(model)
    store: list[tuple[torch.Tensor, dict]] = []

    def hook(_mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        kw["use_cache"] = False
        store.append((hidden, kw))
        raise _Captured

    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, calib.shape[0], batch):
            try:
                model(calib[i:i + batch], use_cache=False)
            except _Captured:
                pass
    finally:
        h.remove()
    return store


def _layer_out(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def layerwise_prune(model: nn.Module, calib: torch.Tensor, targets: dict[str, nn.Linear],
                    stat: str, prune_layer: Callable[[str, nn.Linear, object], torch.Tensor],
                    progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Sequential calibration: per decoder layer, gather input statistics of its target Linears
    (stat='norm': sum of squares per input column; stat='hessian': X^T X), prune them with
    `prune_layer(name, linear, stat)`, then feed the pruned layer's outputs to the next layer."""
    layers = decoder_layers(model)
    inputs = capture_layer_inputs(model, calib)
    layer_of = {id(l): i for i, l in enumerate(layers)}
    names_by_layer: dict[int, list[str]] = {}
    mods = dict(model.named_modules())
    for name in targets:
        parts = name.split(".")
        for j in range(len(parts), 0, -1):
            parent = mods.get(".".join(parts[:j]))
            if parent is not None and id(parent) in layer_of:
                names_by_layer.setdefault(layer_of[id(parent)], []).append(name)
                break
        else:
            raise SizewiseError(f"{name} is outside the decoder layers: sequential calibration cannot prune it; exclude it")
    masks: dict[str, torch.Tensor] = {}
    for li, layer in enumerate(layers):
        names = names_by_layer.get(li, [])
        stats: dict[str, list] = {n: [None, 0] for n in names}
        hooks = []
        for n in names:
            def hook(_m, args, _out, n=n):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                s = stats[n]
                v = (x * x).sum(0) if stat == "norm" else x.T @ x
                s[0] = v if s[0] is None else s[0] + v
                s[1] += x.shape[0]
            hooks.append(targets[n].register_forward_hook(hook))
        try:
            for hidden, kw in inputs:
                layer(hidden, **kw)
        finally:
            for h in hooks:
                h.remove()
        for n in names:
            total, count = stats[n]
            masks[n] = prune_layer(n, targets[n], (total, count))
        inputs = [(_layer_out(layer(hidden, **kw)), kw) for hidden, kw in inputs]
        if progress:
            progress(li + 1, len(layers))
    return masks


# ---------------------------------------------------------------- one-shot pruning

def _check_calib(calib: torch.Tensor | None, method: str) -> torch.Tensor:
    if calib is None or calib.ndim != 2 or calib.numel() < 256:
        n = 0 if calib is None else calib.numel()
        raise SizewiseError(f"{method} needs calibration text: got {n} tokens, need at least 256 (use a longer --text file)")
    return calib


def prune_model(model: nn.Module, method: str, pattern: Pattern, calib: torch.Tensor | None = None,
                per: str | None = None, targets: dict[str, nn.Linear] | None = None,
                previous: dict[str, torch.Tensor] | None = None,
                sparsity_by_layer: dict[str, float] | None = None,
                quant_bits: int = 0, quant_group: int = 128,
                progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Prune the target Linears of `model` in place and return their masks.

    method: magnitude | wanda | sparsegpt. per: 'row' (Wanda's comparison group) or 'layer'
    (classic global-per-matrix magnitude); default row for wanda/sparsegpt, layer for magnitude.
    previous: masks from an earlier schedule step; weights pruned then stay pruned.
    sparsity_by_layer: per-layer unstructured targets (overrides pattern.sparsity for that name).
    quant_bits/quant_group: SparseGPT only: quantize kept weights jointly (int4 group-wise).
    """
    if method not in METHODS:
        raise SizewiseError(f"unknown pruning method {method!r}: use one of {', '.join(METHODS)}")
    targets = targets if targets is not None else prunable_linears(model)
    for n, lin in targets.items():
        check_pattern_fits(pattern, lin.in_features, n)
    per = per or ("layer" if method == "magnitude" else "row")
    previous = previous or {}

    def pat_for(name: str) -> Pattern:
        if sparsity_by_layer and name in sparsity_by_layer and not pattern.is_nm:
            return Pattern(sparsity_by_layer[name])
        return pattern

    if quant_bits and method != "sparsegpt":
        raise SizewiseError("joint quantization while pruning is a SparseGPT feature: use --prune sparsegpt")

    if method == "magnitude":
        masks = {}
        with torch.no_grad():
            for n, lin in targets.items():
                masks[n] = mask_from_scores(magnitude_scores(lin.weight), pat_for(n), per, previous.get(n))
                lin.weight.mul_(masks[n].to(lin.weight.dtype))
        return masks

    calib = _check_calib(calib, method)
    if method == "wanda":
        def prune_layer(name, lin, stat):
            sq, _count = stat
            m = mask_from_scores(wanda_scores(lin.weight, sq.sqrt()), pat_for(name), per, previous.get(name))
            lin.weight.mul_(m.to(lin.weight.dtype))
            return m
        return layerwise_prune(model, calib, targets, "norm", prune_layer, progress)

    from sizewise.compression.sparsegpt import sparsegpt_prune

    quant: dict[str, dict] = {}

    def prune_layer(name, lin, stat):
        xtx, count = stat
        g = quant_group
        if quant_bits:
            from sizewise.compression.sparse import int4_group_for
            g = int4_group_for(lin.in_features, quant_group)
        w, m, qp = sparsegpt_prune(lin.weight.data, 2.0 * xtx / max(count, 1), pat_for(name),
                                   prev_mask=previous.get(name), quant_bits=quant_bits, quant_group=g)
        lin.weight.data.copy_(w.to(lin.weight.dtype))
        if qp is not None:
            quant[name] = qp
        return m

    masks = layerwise_prune(model, calib, targets, "hessian", prune_layer, progress)
    if quant:
        # the joint int4 grid travels with the model so that packing stores exactly these codes
        model._sizewise_sparse_quant = quant  # type: ignore[attr-defined]
    return masks
