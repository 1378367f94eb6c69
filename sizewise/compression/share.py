"""Parameter sharing: same-shaped weights of adjacent layers stored as one base plus binary masks.

For a group of k weights (e.g. mlp.up_proj of layers 2j and 2j+1), W_i = W_base * M_i
(element-wise), M_i a per-layer bit mask. Per element, the L2-optimal choice is found exactly by
trying every non-empty subset S of the k layers: base = mean of W_i over S, layers outside S get
0 (2^k - 1 candidates; k = 2 -> 3). The base is then fine-tuned on the LM loss with masks fixed.

Storage per group: one fp16 base + k bit masks instead of k fp16 matrices, i.e. (16 + k) / (16 k)
of the bytes (0.5625 for k = 2). What that costs in quality is measured, not assumed.
"""
from __future__ import annotations

import itertools
import uuid
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sizewise.compression.packed import PackedLinear, register_scheme
from sizewise.compression.sparse import pack_bits, unpack_bits
from sizewise.errors import SizewiseError

DEFAULT_PROJECTIONS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# group id -> base Parameter of the group's owner, filled while a checkpoint loads (owner first)
_LOADING: "weakref.WeakValueDictionary[str, nn.Parameter]" = weakref.WeakValueDictionary()


def fit_shared(ws: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Exact per-element least squares: min over base b and masks M_i of sum_i ||W_i - b*M_i||^2."""
    k = len(ws)
    if k < 2 or k > 6:
        raise SizewiseError(f"share groups need 2 to 6 tensors, got {k}")
    W = torch.stack([w.detach().float() for w in ws])  # [k, ...]
    sq = W * W
    best_err = best_base = best_sub = None
    subsets = [s for r in range(1, k + 1) for s in itertools.combinations(range(k), r)]
    for si, s in enumerate(subsets):
        sel = torch.zeros(k, dtype=torch.bool)
        sel[list(s)] = True
        base = W[sel].mean(0)
        err = ((W[sel] - base) ** 2).sum(0) + sq[~sel].sum(0)
        if best_err is None:
            best_err, best_base = err, base
            best_sub = torch.zeros_like(err, dtype=torch.long)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_base = torch.where(better, base, best_base)
            best_sub = torch.where(better, torch.full_like(best_sub, si), best_sub)
    masks = []
    for i in range(k):
        member = torch.tensor([i in s for s in subsets])
        masks.append(member[best_sub])
    return best_base, masks


class SharedLinear(PackedLinear):
    """One layer of a sharing group: weight = base * mask; the base Parameter is shared by the group."""

    scheme = "shared-mask-fp16"
    kernel = "dense F.linear on base*mask (no speedup: same FLOPs as dense)"

    def __init__(self, base: nn.Parameter, mask: torch.Tensor, group: str, owner: bool,
                 bias: torch.Tensor | None) -> None:
        super().__init__(mask.shape[1], mask.shape[0], bias)
        self.base = base  # shared nn.Parameter (registered in every member; saved once by the owner)
        self.register_buffer("mask", mask.to(torch.bool), persistent=False)
        self.group, self.owner = group, owner

    def weight_now(self) -> torch.Tensor:
        return self.base * self.mask.to(self.base.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_now().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_now().detach().float()

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        out = {"mask": pack_bits(self.mask, 1)}
        if self.owner:
            out["base"] = self.base.detach().to(torch.float16)
        return out

    def packed_meta(self) -> dict:
        return {**super().packed_meta(), "group": self.group, "owner": self.owner}

    @classmethod
    def from_packed(cls, tensors: dict[str, torch.Tensor], meta: dict, bias: torch.Tensor | None) -> "SharedLinear":
        rows, cols = int(meta["out_features"]), int(meta["in_features"])
        mask = unpack_bits(tensors["mask"], 1, rows * cols).reshape(rows, cols).to(torch.bool)
        group = meta["group"]
        if meta["owner"]:
            base = nn.Parameter(tensors["base"].float(), requires_grad=False)
            _LOADING[group] = base
        else:
            base = _LOADING.get(group)
            if base is None:
                raise SizewiseError(f"shared group {group}: a member was loaded before its base: the checkpoint is damaged")
        return cls(base, mask, group, bool(meta["owner"]), bias)


register_scheme(SharedLinear.scheme, SharedLinear)


def share_groups(model: nn.Module, group_size: int = 2,
                 projections: tuple[str, ...] = DEFAULT_PROJECTIONS) -> list[list[str]]:
    """Groups of Linear names: the same projection in `group_size` adjacent decoder layers."""
    import re

    if group_size < 2:
        raise SizewiseError(f"--group-size {group_size}: sharing needs at least 2 layers per group")
    by_proj: dict[str, dict[int, str]] = {p: {} for p in projections}
    for name, m in model.named_modules():
        hit = re.search(r"\.layers\.(\d+)\.(.+)$", name)
        if hit and hit.group(2) in by_proj and type(m) is nn.Linear:
            by_proj[hit.group(2)][int(hit.group(1))] = name
    groups = []
    mods = dict(model.named_modules())
    for p, layers in by_proj.items():
        idx = sorted(layers)
        for i in range(0, len(idx) - group_size + 1, group_size):
            g = [layers[j] for j in idx[i:i + group_size]]
            if len({tuple(mods[n].weight.shape) for n in g}) == 1:
                groups.append(g)
    if not groups:
        raise SizewiseError(f"no groups of {group_size} same-shaped {', '.join(projections)} layers in this model")
    return groups


def apply_sharing(model: nn.Module, groups: list[list[str]]) -> dict[str, float]:
    """Replace each group's Linears by SharedLinear modules; returns per-group relative L2 error."""
    from sizewise.compression.apply import set_module

    mods = dict(model.named_modules())
    errors = {}
    for g in groups:
        ws = [mods[n].weight for n in g]
        base, masks = fit_shared(ws)
        # round the base to its fp16 storage now, so fine-tuning and saving see the same weights
        p = nn.Parameter(base.to(torch.float16).float(), requires_grad=False)
        gid = uuid.uuid4().hex[:12]
        num = sum(float(((w.detach().float() - p.detach() * m) ** 2).sum()) for w, m in zip(ws, masks))
        den = sum(float((w.detach().float() ** 2).sum()) for w in ws)
        errors[g[0]] = (num / max(den, 1e-30)) ** 0.5
        for j, (n, m) in enumerate(zip(g, masks)):
            lin = mods[n]
            set_module(model, n, SharedLinear(p, m, gid, j == 0, lin.bias))
    return errors


def shared_params(model: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, SharedLinear) and id(m.base) not in seen:
            seen.add(id(m.base))
            out.append(m.base)
    return out


def round_bases_fp16(model: nn.Module) -> None:
    """After fine-tuning: put bases back on the fp16 grid they are stored in."""
    with torch.no_grad():
        for p in shared_params(model):
            p.copy_(p.half().float())


def share_bytes(model: nn.Module) -> dict[str, Any]:
    """Real bytes of the shared tensors (packed) vs the same tensors dense fp16."""
    packed = dense = 0
    for m in model.modules():
        if isinstance(m, SharedLinear):
            packed += sum(t.numel() * t.element_size() for t in m.packed_tensors().values())
            dense += m.in_features * m.out_features * 2
    return {"shared_packed_bytes": packed, "shared_dense_fp16_bytes": dense,
            "ratio": packed / dense if dense else None}
