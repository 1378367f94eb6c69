"""SparseGPT (Frantar & Alistarh 2023): prune one Linear with second-order weight updates.

For a layer with calibration inputs X, the Hessian of the reconstruction error is H = 2 X^T X.
Columns are visited left to right in blocks; inside a block the mask is chosen by the OBS
saliency w^2 / [H^-1]_jj^2 (per block for unstructured, per M columns for N:M) and every
removed (or quantized) weight's error is spread over the columns not yet visited through the
Cholesky factor of H^-1. Optional joint int4 quantization (GPTQ-style, group-wise asymmetric)
makes the kept weights land exactly on the grid that the packed module stores.
"""
from __future__ import annotations

import torch

from sizewise.compression import quant as Q
from sizewise.compression.prune import Pattern, check_pattern_fits


def int4_group_params(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One asymmetric int4 grid per row of `w` (rows, g), the core's convention (quant.py):
    scale rounded to its storage dtype first, integer zero point, 0 always representable."""
    scale, zp = Q.group_qparams_int4(w, w.shape[1])
    return scale.float().reshape(-1), zp.float().reshape(-1)


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    q = torch.clamp(torch.round(w / scale) + zero, 0, 15)
    return scale * (q - zero)


def sparsegpt_prune(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """See _sparsegpt_prune. Runs single-threaded: the column loop is thousands of small ops, for
    which thread hand-offs cost more than they give (20x slower with 2 threads on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _sparsegpt_prune(*args, **kwargs)
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def _sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern,
                    blocksize: int = 128, percdamp: float = 0.01,
                    prev_mask: torch.Tensor | None = None, quant_bits: int = 0, quant_group: int = 128,
                    ) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """Return (new weight, keep mask, quant params or None). `hessian` = 2 X^T X / n (cols x cols).

    prev_mask: weights already pruned stay pruned (progressive schedules).
    quant params: {'bits', 'group_size', 'scales' (rows, cols/g) bf16, 'zeros' (rows, cols/g) int32}.
    """
    W = weight.detach().clone().float()
    rows, cols = W.shape
    check_pattern_fits(pattern, cols)
    if quant_bits:
        if quant_bits != 4:
            raise ValueError("joint quantization supports int4 only")
        if cols % quant_group:
            raise ValueError(f"group size {quant_group} must divide {cols}")
        blocksize = max(blocksize // quant_group, 1) * quant_group  # groups never straddle blocks
    if pattern.is_nm:
        blocksize = max(blocksize // pattern.m, 1) * pattern.m
    H = hessian.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols, dtype=H.dtype)
    for attempt in range(5):  # raise damping until the Cholesky factorization succeeds
        try:
            L = torch.linalg.cholesky(H)
            break
        except RuntimeError:
            H += damp * (10 ** attempt) * torch.eye(cols, dtype=H.dtype)
    else:
        raise RuntimeError("Hessian is not positive definite even after damping")
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    prune_all = torch.zeros(rows, cols, dtype=torch.bool)  # True = pruned
    scales = zeros = None
    if quant_bits:
        scales = torch.empty(rows, cols // quant_group)
        zeros = torch.empty(rows, cols // quant_group)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        forced = (~prev_mask[:, i1:i2]) if prev_mask is not None else torch.zeros_like(W1, dtype=torch.bool)
        if not pattern.is_nm:
            tmp = W1 ** 2 / d.reshape(1, -1) ** 2
            tmp = tmp.masked_fill(forced, -1.0)  # already-pruned weights go first
            k = int(round(pattern.sparsity * tmp.numel()))
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            if k:
                idx = torch.topk(tmp.flatten(), k, largest=False, sorted=False).indices
                mask1.view(-1)[idx] = True
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            if pattern.is_nm and i % pattern.m == 0:
                tmp = W1[:, i:i + pattern.m] ** 2 / d[i:i + pattern.m].reshape(1, -1) ** 2
                tmp = tmp.masked_fill(forced[:, i:i + pattern.m], -1.0)
                drop = torch.topk(tmp, pattern.m - pattern.n, dim=1, largest=False).indices
                mask1.scatter_(1, i + drop, True)
            if quant_bits and (i1 + i) % quant_group == 0:
                g = (i1 + i) // quant_group
                s, z = int4_group_params(W1[:, i:i + quant_group] * ~mask1[:, i:i + quant_group]
                                         if not pattern.is_nm else W1[:, i:i + quant_group])
                scales[:, g], zeros[:, g] = s, z
            q = w.clone()
            q[mask1[:, i]] = 0.0
            if quant_bits:
                g = (i1 + i) // quant_group
                q = quantize_to_grid(q, scales[:, g], zeros[:, g])
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        prune_all[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    keep = ~prune_all
    W = W * keep  # exact zeros where pruned
    qp = None
    if quant_bits:
        qp = {"bits": quant_bits, "group_size": quant_group,
              "scales": scales.to(Q.SCALE_DTYPE), "zeros": zeros.to(torch.int32)}
    return W.to(weight.dtype), keep, qp
