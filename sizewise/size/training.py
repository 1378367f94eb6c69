"""Training memory per GPU: weights, gradients, optimizer states (ZeRO-sharded), activations.

Mixed precision throughout: bf16 weights and gradients, fp32 master weights in the optimizer.
Activations follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models" (arXiv:2205.05198), Table 2, with tensor parallelism taken to include
sequence parallelism (so every term divides by tp).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

from sizewise.arch.inventory import ArchInfo, ParamInventory
from sizewise.errors import SizewiseError

# bytes per parameter before sharding: (weights, gradients, optimizer states)
OPTIMIZERS: dict[str, tuple[int, int, int]] = {
    # fp32 master + fp32 m + fp32 v = 12 (ZeRO paper, "16 bytes per parameter")
    "adamw": (2, 2, 12),
    # bitsandbytes 8-bit AdamW: fp32 master (4) + m, v in 8 bits (1 + 1); the block-wise
    # quantization statistics (one fp32 per 2048-element block per state) are <0.5 % and ignored
    "adamw-8bit": (2, 2, 6),
    # SGD with momentum: fp32 master (4) + fp32 momentum buffer (4)
    "sgd": (2, 2, 8),
}
RECOMPUTE = ("none", "selective", "full")

# Korthikanti et al. 2022, per layer, bytes / (s*b*h): 34 = 11 (attention) + 19 (MLP) + 4 (layer norms)
ATTN_AND_NORMS_SBH = 15
MLP_SBH = 19  # for an MLP of width 4h


@dataclass
class TrainingMemory:
    optimizer: str
    zero: int
    gpus: int
    tp: int
    recompute: str
    seq: int
    micro_batch: int
    params: int
    bytes_per_param: int  # weights + grads + optimizer states, before sharding
    weights: int  # per GPU, after TP and ZeRO sharding
    grads: int
    optimizer_states: int
    activations: int
    per_gpu_bytes: int
    total_bytes: int  # across all gpus * tp
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        keys = ("optimizer", "zero", "gpus", "tp", "recompute", "seq", "micro_batch", "params", "bytes_per_param",
                "weights", "grads", "optimizer_states", "activations", "per_gpu_bytes", "total_bytes", "notes")
        return {k: getattr(self, k) for k in keys}


def validate_training_args(optimizer: str, zero: int, gpus: int, recompute: str, seq: int, micro_batch: int,
                           tp: int = 1) -> None:
    if optimizer not in OPTIMIZERS:
        raise SizewiseError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if zero not in (0, 1, 2, 3):
        raise SizewiseError(f"--zero must be 0, 1, 2 or 3 (DeepSpeed ZeRO stage), got {zero}")
    if recompute not in RECOMPUTE:
        raise SizewiseError(f"unknown recompute mode {recompute!r}: choose one of {', '.join(RECOMPUTE)}")
    for name, v in (("gpus", gpus), ("seq", seq), ("micro-batch", micro_batch), ("tp", tp)):
        if not isinstance(v, int) or v < 1:
            raise SizewiseError(f"--{name} must be a positive integer, got {v}")


def _moe_mlp_ratio(arch: ArchInfo) -> float:
    """MoE layers: each token's MLP activations span only its activated experts (top-k routed +
    shared), so the paper's 19sbh (for a 4h-wide MLP) scales by activated width / 4h."""
    width = (arch.experts_per_token + arch.num_shared_experts) * arch.moe_intermediate_size
    return width / (4 * arch.hidden_size)


def layer_activation_bytes(arch: ArchInfo, seq: int, micro_batch: int, recompute: str = "none",
                           tp: int = 1, moe_layer: bool = False) -> float:
    """One transformer layer's stored activations (bytes), per GPU."""
    s, b, h, a = seq, micro_batch, arch.hidden_size, arch.num_attention_heads
    if recompute == "full":
        return 2 * s * b * h / tp  # only the layer input is kept
    per_sbh = ATTN_AND_NORMS_SBH + MLP_SBH * (_moe_mlp_ratio(arch) if moe_layer else 1.0)
    stored = per_sbh * s * b * h
    if recompute == "none":
        stored += 5 * a * s * s * b  # softmax input/output, dropout mask, attention over values
    return stored / tp


def activation_bytes(arch: ArchInfo, seq: int, micro_batch: int, recompute: str = "none", tp: int = 1) -> int:
    """All layers (MTP layers included: they train too) plus the output layer:
    4sbh/t (final norm + head input) + 4sbv/t (fp32 logits for the loss)."""
    moe_layers = arch.num_moe_layers if arch.num_experts else 0
    mtp = arch.num_mtp_layers
    dense_layers = arch.num_layers - moe_layers + (0 if arch.num_experts else mtp)
    moe_layers += mtp if arch.num_experts else 0
    per_dense = layer_activation_bytes(arch, seq, micro_batch, recompute, tp, moe_layer=False)
    per_moe = layer_activation_bytes(arch, seq, micro_batch, recompute, tp, moe_layer=True)
    s, b, h, v = seq, micro_batch, arch.hidden_size, arch.vocab_size
    head = (4 * s * b * h + 4 * s * b * v) / tp
    return ceil(dense_layers * per_dense + moe_layers * per_moe + head)


def training_memory(inv: ParamInventory, optimizer: str = "adamw", zero: int = 0, gpus: int = 1,
                    recompute: str = "none", seq: int = 4096, micro_batch: int = 1, tp: int = 1) -> TrainingMemory:
    """Per-GPU memory to train every stored parameter (MoE experts and MTP included).

    ZeRO-1 shards optimizer states over the `gpus` data-parallel ranks, ZeRO-2 also gradients,
    ZeRO-3 also weights. Tensor parallelism splits parameters and activations by `tp` first."""
    validate_training_args(optimizer, zero, gpus, recompute, seq, micro_batch, tp)
    w_b, g_b, o_b = OPTIMIZERS[optimizer]
    p = inv.total
    p_tp = ceil(p / tp)
    weights = ceil(w_b * p_tp / (gpus if zero >= 3 else 1))
    grads = ceil(g_b * p_tp / (gpus if zero >= 2 else 1))
    states = ceil(o_b * p_tp / (gpus if zero >= 1 else 1))
    act = activation_bytes(inv.arch, seq, micro_batch, recompute, tp)
    per_gpu = weights + grads + states + act
    notes = [
        f"{optimizer}: {w_b}+{g_b}+{o_b} = {w_b + g_b + o_b} bytes/param before sharding",
        "activations: Korthikanti et al. 2022, sbh(34 + 5as/h) per layer (selective: 34sbh, full: 2sbh), "
        "plus 4sbh + 4sbv for the output layer; tp > 1 assumes sequence parallelism",
        "not included: temporary all-gather/reduce buffers, CUDA context, allocator fragmentation",
    ]
    if recompute == "none":
        notes.append("the 5as/h term stores the seq x seq attention matrices; FlashAttention-style kernels "
                     "never store them, which --recompute selective models")
    if inv.arch.num_experts:
        notes.append(f"MoE layers: MLP activations scaled to the activated experts' width "
                     f"({_moe_mlp_ratio(inv.arch):.3f} x the paper's 4h MLP)")
    return TrainingMemory(optimizer, zero, gpus, tp, recompute, seq, micro_batch, p, w_b + g_b + o_b,
                          weights, grads, states, act, per_gpu, per_gpu * gpus * tp, notes)
