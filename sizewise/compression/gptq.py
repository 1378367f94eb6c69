"""GPTQ (Frantar et al. 2022) for int4 group-wise and int8 per-channel weights, readable top to bottom.

1. Hessian: H = 2/n * sum(x x^T) over the calibration inputs of each Linear (forward hooks).
2. Damping: H += damp * mean(diag H) * I; dead inputs (diag 0) get H_ii = 1 and zero weights.
3. Hinv = upper Cholesky factor of H^-1.
4. Columns are quantized left to right in blocks; each column's rounding error is spread over the
   not-yet-quantized columns through Hinv (lazy batch updates between blocks).
5. Group params (scale, zero point) are computed when a group starts, from the *updated* weights
   (as the reference does). With act_order, columns go in order of decreasing diag(H) and group
   params are computed up front from the original weights ("static groups"), so groups stay
   contiguous in the original column order and the storage / kernel are the same as RTN's.

The sequential pipeline (`gptq_quantize_layers`) runs decoder layer after decoder layer: layer i is
calibrated on the outputs of the already-quantized layers 0..i-1 (llm-compressor's sequential
pipeline), so only one layer's activations are held at a time.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn

from sizewise.compression import quant as Q


class HessianAccumulator:
    """Running H = 2/n * sum x x^T (and the per-channel max |x|, for SmoothQuant, and sum x^2, for
    activation-weighted int4 grids), fed by a forward hook on one Linear. hessian=False keeps only the
    per-channel statistics (no K x K work)."""

    def __init__(self, k: int, hessian: bool = True) -> None:
        self.H = torch.zeros(k, k, dtype=torch.float32) if hessian else None
        self.absmax = torch.zeros(k, dtype=torch.float32)
        self.sumsq = torch.zeros(k, dtype=torch.float32)
        self.n = 0

    @property
    def importance(self) -> torch.Tensor:
        """Mean x^2 per input channel (what diag(H) / 2 is, without H)."""
        return self.sumsq / max(self.n, 1)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        torch.maximum(self.absmax, x.abs().amax(0), out=self.absmax)
        self.sumsq += x.pow(2).sum(0)
        m = x.shape[0]
        if self.H is None:
            self.n += m
            return
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2.0 / self.n) * x
        self.H += x.t() @ x

    def hook(self, module: nn.Module, inputs: tuple, output) -> None:
        self.add(inputs[0].detach())


def _prepare(w: torch.Tensor, H: torch.Tensor, act_order: bool, damp: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dead inputs zeroed, optional act-order permutation, damping -> (W permuted, upper Cholesky of H^-1, perm)."""
    W = w.detach().float().clone()
    k = W.shape[1]
    H = H.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k)
    L = torch.linalg.cholesky(H)
    return W, torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True), perm


def _gptq_columns(W: torch.Tensor, Hinv: torch.Tensor, block: int,
                  quantize_column: Callable[[int, int, torch.Tensor], torch.Tensor]) -> None:
    """The GPTQ sweep: columns left to right; quantize_column(col, i, W1) rounds column i of the current
    block W1 (already updated by earlier errors) and returns its dequantized value; the rounding error is
    spread over the not-yet-quantized columns, lazily between blocks."""
    k = W.shape[1]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            wcol = W1[:, i].clone()
            err = (wcol - quantize_column(i1 + i, i, W1)) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]


def gptq_quantize_weight(w: torch.Tensor, H: torch.Tensor, group_size: int, act_order: bool = False,
                         damp: float = 0.01, block_size: int = 128, zero: str = "int", grid: str = "minmax",
                         fixed: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K], H [K, K] -> (q int32 [N, K] in [0,15], scale [N, K/g], zero [N, K/g]): RTN's layout for
    the same `zero` convention (int32 zero points, or bf16 float zeros: w = (q - 8) * scale + zero).
    fixed: every group's (scale, zero) chosen beforehand (e.g. a coded grid); GPTQ then only rounds."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide input dim {k}")
    G = k // group_size
    diag = torch.diag(H).float()
    scale = torch.zeros(n, G, dtype=Q.SCALE_DTYPE)
    zeros = torch.zeros(n, G, dtype=torch.int32 if zero == "int" else Q.SCALE_DTYPE)
    if fixed is not None:
        scale, zeros = fixed[0].to(Q.SCALE_DTYPE), fixed[1].to(zeros.dtype)
    elif act_order:  # static groups from the original weights, so groups stay contiguous in storage
        w0 = w.detach().float().clone()
        w0[:, diag == 0] = 0.0
        scale, zeros = Q.int4_grid(w0, group_size, zero, grid, diag)  # "act-mse": columns weighed by diag(H)
    W, Hinv, perm = _prepare(w, H, act_order, damp)
    Qint = torch.zeros(n, k, dtype=torch.int32)

    def column(col: int, i: int, W1: torch.Tensor) -> torch.Tensor:
        g = int(perm[col]) // group_size
        if fixed is None and not act_order and col % group_size == 0:  # group params from the *updated* weights
            s, z = Q.int4_grid(W1[:, i:i + group_size], group_size, zero, grid, diag[col:col + group_size])
            scale[:, g], zeros[:, g] = s[:, 0], z[:, 0]
        s, z = scale[:, g].float(), zeros[:, g].float()
        if zero == "int":
            qcol = (torch.round(W1[:, i] / s) + z).clamp(0, 15)
            Qint[:, col] = qcol.to(torch.int32)
            return (qcol - z) * s
        qcol = (torch.round((W1[:, i] - z) / s) + 8).clamp(0, 15)  # float zero: (q - 8) * s + zero
        Qint[:, col] = qcol.to(torch.int32)
        return (qcol - 8) * s + z

    # blocks hold whole groups, so a group starting inside a block sees the block's updated columns
    _gptq_columns(W, Hinv, max(group_size, (block_size // group_size) * group_size), column)
    return Qint[:, torch.argsort(perm)].contiguous(), scale, zeros


def gptq_quantize_int8(w: torch.Tensor, H: torch.Tensor, act_order: bool = False, damp: float = 0.01,
                       block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q int8 [N, K], scale [N]): RTN's per-channel symmetric layout, GPTQ rounding.
    The scale is fixed up front (absmax / 127 of the original row), so no column ever clips."""
    _, scale = Q.quantize_per_channel_int8(w)
    W, Hinv, perm = _prepare(w, H, act_order, damp)
    s = scale.float()
    Qint = torch.zeros(W.shape, dtype=torch.int8)

    def column(col: int, i: int, W1: torch.Tensor) -> torch.Tensor:
        qcol = torch.round(W1[:, i] / s).clamp(-127, 127)
        Qint[:, col] = qcol.to(torch.int8)
        return qcol * s

    _gptq_columns(W, Hinv, block_size, column)
    return Qint[:, torch.argsort(perm)].contiguous(), scale


# --- sequential pipeline over decoder layers ---

class _Stop(Exception):
    pass


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layer list (model.model.layers for llama-likes)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and len(mod) > 0:
            return name, mod
    raise ValueError("no decoder layer list found (expected a ModuleList named '...layers')")


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: Iterable[torch.Tensor]
                         ) -> list[tuple[tuple, dict]]:
    """Run the model up to layers[0] on each batch; return the (args, kwargs) layer 0 was called with."""
    captured: list[tuple[tuple, dict]] = []

    def pre_hook(mod, args, kwargs):
        captured.append((args, dict(kwargs)))
        raise _Stop

    h = layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
    return captured


def _hidden(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    """The same layer call with new hidden states (passed positionally or as a keyword)."""
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return (), {**kwargs, "hidden_states": h}


@torch.no_grad()
def run_sequential(model: nn.Module, calib: torch.Tensor, is_target: Callable[[str], bool],
                   quantize_layer: Callable[[str, nn.Module, dict[str, HessianAccumulator]], None],
                   progress: Callable[[int, int], None] | None = None,
                   before_layer: Callable[[int, nn.Module], None] | None = None,
                   after_layer: Callable[[int, nn.Module], None] | None = None, hessian: bool = True) -> None:
    """For each decoder layer: hook its target Linears, run the calibration inputs through it to fill
    their Hessians, let `quantize_layer` replace them, then re-run the layer (now quantized) to make
    the next layer's inputs. `before_layer`/`after_layer` let the streaming path read a layer's
    weights from disk just in time and drop them once written."""
    prefix, layers = decoder_layers(model)
    inputs = capture_layer_inputs(model, layers, [calib[i:i + 1] for i in range(calib.shape[0])])
    for li in range(len(layers)):
        if before_layer:
            before_layer(li, layers[li])
        layer = layers[li]
        lname = f"{prefix}.{li}"
        accs: dict[str, HessianAccumulator] = {}
        hooks = []
        for name, mod in layer.named_modules():
            full = f"{lname}.{name}"
            if isinstance(mod, nn.Linear) and is_target(full):
                accs[full] = HessianAccumulator(mod.in_features, hessian)
                hooks.append(mod.register_forward_hook(accs[full].hook))
        for args, kwargs in inputs:
            layer(*args, **kwargs)
        for h in hooks:
            h.remove()
        quantize_layer(lname, layer, accs)
        inputs = [_with_hidden(args, kwargs, _hidden(layer(*args, **kwargs))) for args, kwargs in inputs]
        if after_layer:
            after_layer(li, layer)
        if progress:
            progress(li + 1, len(layers))
