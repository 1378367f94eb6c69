"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before W8A8.

Per-token int8 activations lose precision when a few input channels are much larger than the rest
(the scale is set by the outlier, so ordinary channels get few levels). SmoothQuant divides each
input channel j by s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) and multiplies the weights' column j
by s_j, which leaves the float model's outputs unchanged (exactly, up to rounding) and makes both
operands easier to quantize. The division is folded into whatever produces the input:

- q/k/v_proj   <- input_layernorm's weight       (RMSNorm: y = w * x / rms(x))
- gate/up_proj <- post_attention_layernorm's weight
- down_proj    <- up_proj's output rows           (x = act(gate(h)) * up(h), linear in up)

(llm-compressor's default llama mappings.) Layers that do not have these names are left alone and
listed. Activation maxima come from calibration text disjoint from the evaluation text, one decoder
layer at a time (gptq.run_sequential), so layer i is smoothed for the inputs it will really see:
the outputs of layers 0..i-1 already smoothed and quantized.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SmoothRecord:
    alpha: float
    smoothed: dict[str, list[str]] = field(default_factory=dict)  # what the 1/s went into -> the Linears scaled by s
    skipped: list[str] = field(default_factory=list)  # decoder layers without the expected names


def _mappings(layer: nn.Module) -> list[tuple[nn.Module, str, list[str]]] | None:
    """(where 1/s is folded, its attribute path, the Linears whose input is smoothed)."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    need = [(layer, "input_layernorm"), (layer, "post_attention_layernorm"), (attn, "q_proj"), (attn, "k_proj"),
            (attn, "v_proj"), (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")]
    if any(m is None or not isinstance(getattr(m, a, None), nn.Module) for m, a in need):
        return None
    return [(layer.input_layernorm, "input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            (layer.post_attention_layernorm, "post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]),
            (mlp.up_proj, "mlp.up_proj", ["mlp.down_proj"])]


@torch.no_grad()
def smooth_layer(layer: nn.Module, absmax: dict[str, torch.Tensor], alpha: float, prefix: str,
                 rec: SmoothRecord) -> None:
    """Fold SmoothQuant scales into one decoder layer. `absmax`: layer-relative Linear name (e.g.
    'self_attn.q_proj') -> per-input-channel max |x| over the calibration tokens."""
    maps = _mappings(layer)
    if maps is None:
        rec.skipped.append(prefix)
        return
    for src, src_name, names in maps:
        lins = [layer.get_submodule(n) for n in names]
        if any(type(m) is not nn.Linear for m in lins) or names[0] not in absmax:
            rec.skipped.append(f"{prefix}.{src_name}")
            continue
        xmax = absmax[names[0]].float().clamp(min=1e-5)
        wmax = torch.stack([m.weight.detach().abs().float().amax(0) for m in lins]).amax(0).clamp(min=1e-5)
        s = (xmax.pow(alpha) / wmax.pow(1.0 - alpha)).clamp(min=1e-5)
        if isinstance(src, nn.Linear):  # up_proj: its output rows (and bias) produce down_proj's input
            src.weight.div_(s[:, None].to(src.weight.dtype))
            if src.bias is not None:
                src.bias.div_(s.to(src.bias.dtype))
        else:  # RMSNorm-like: a per-channel weight multiplies the normalized input
            w = getattr(src, "weight", None)
            if w is None or w.shape != s.shape:
                raise ValueError(f"cannot fold SmoothQuant scales into {prefix}.{src_name} ({type(src).__name__})")
            w.div_(s.to(w.dtype))
            if getattr(src, "bias", None) is not None:
                src.bias.div_(s.to(src.bias.dtype))
        for m in lins:
            m.weight.mul_(s[None, :].to(m.weight.dtype))
        rec.smoothed[f"{prefix}.{src_name}"] = [f"{prefix}.{n}" for n in names]
