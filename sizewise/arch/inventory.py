"""The parameter inventory: every tensor a checkpoint stores, described by shape and multiplicity.

Everything that sizes a model (formats, memory, parallel plans) reads this, so it carries
shapes rather than bare counts: group-wise scales, per-channel scales and block scales all
depend on the matrix shapes, not only on the number of parameters. Pure Python, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

# Group names, in display order. Every TensorSpec belongs to exactly one.
GROUPS = (
    "embedding",
    "attention",
    "mlp",  # dense FFN (including DeepSeek's first_k_dense_replace layers)
    "shared_experts",
    "routed_experts",
    "router",  # gate weights and, where stored, the score-correction bias
    "norms",
    "lm_head",
    "mtp",  # DeepSeek-V3/R1 multi-token-prediction layer(s): on disk, not used for plain decoding
)

# Tensor kinds decide which tensors a storage format quantizes.
KINDS = ("linear", "embedding", "lm_head", "norm", "bias", "router", "buffer")


@dataclass(frozen=True)
class TensorSpec:
    """One family of identically shaped tensors, e.g. all layers' q_proj weights."""

    name: str  # representative checkpoint name with placeholders, e.g. "model.layers.{i}.self_attn.q_proj.weight"
    shape: tuple[int, ...]
    copies: int  # how many such tensors the checkpoint stores
    group: str
    kind: str
    active_copies: int | None = None  # copies used per token (MoE); None = all copies

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"unknown group {self.group!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def total(self) -> int:
        return self.numel * self.copies

    @property
    def activated(self) -> int:
        n = self.copies if self.active_copies is None else self.active_copies
        return self.numel * n


@dataclass(frozen=True)
class ArchInfo:
    """The architecture facts that memory and parallelism need beyond the tensor list."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int  # per-head dim of K (and of V unless v_head_dim is set)
    vocab_size: int
    intermediate_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention: str = "gqa"  # "mha" | "gqa" | "mla"
    v_head_dim: int | None = None  # MLA: value head dim differs from qk head dim
    # MLA (DeepSeek V2/V3)
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    # MoE
    num_experts: int = 0  # routed experts per MoE layer
    experts_per_token: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    num_moe_layers: int = 0
    num_mtp_layers: int = 0
    sliding_window: int | None = None


@dataclass
class GroupCount:
    total: int = 0
    activated: int = 0


@dataclass
class ParamInventory:
    name: str
    arch: ArchInfo
    tensors: list[TensorSpec] = field(default_factory=list)

    def add(self, name: str, shape: tuple[int, ...], copies: int, group: str, kind: str,
            active_copies: int | None = None) -> None:
        if copies > 0 and all(d > 0 for d in shape):
            self.tensors.append(TensorSpec(name, tuple(int(d) for d in shape), int(copies), group, kind,
                                           None if active_copies is None else int(active_copies)))

    @property
    def total(self) -> int:
        """What the checkpoint stores: parameters (tied once), persistent buffers, MTP layers."""
        return sum(t.total for t in self.tensors)

    @property
    def activated(self) -> int:
        """Parameters touched per token in plain decoding (MTP excluded, top-k experts only)."""
        return sum(t.activated for t in self.tensors if t.group != "mtp")

    @property
    def mtp(self) -> int:
        return sum(t.total for t in self.tensors if t.group == "mtp")

    @property
    def total_without_mtp(self) -> int:
        return self.total - self.mtp

    @property
    def is_moe(self) -> bool:
        return self.arch.num_experts > 0

    def groups(self) -> dict[str, GroupCount]:
        out: dict[str, GroupCount] = {}
        for g in GROUPS:
            ts = [t for t in self.tensors if t.group == g]
            if ts:
                out[g] = GroupCount(sum(t.total for t in ts),
                                    0 if g == "mtp" else sum(t.activated for t in ts))
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model_type": self.arch.model_type,
            "total": self.total,
            "activated": self.activated,
            "mtp": self.mtp,
            "groups": {g: {"total": c.total, "activated": c.activated} for g, c in self.groups().items()},
        }
