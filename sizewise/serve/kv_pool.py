"""Paged KV pool: fixed-size blocks allocated once at start, per-sequence block tables.

The pool knows tensor shapes, not models: a `KVLayout` says how many values one token
stores per layer (GQA: keys and values per KV head; MLA: one compressed latent), and
the pool hands out blocks of `block_size` token slots. A token's *slot* is
`block * block_size + offset`; the runner writes the layer tensors by slot and reads them a whole
block at a time. GQA tensors are head-major, [kv_heads, slots, head_dim], so the keys of one head
and one block are one contiguous run: a gather by block copies runs of block_size * head_dim
values and lands directly in the [kv_heads * batch, context, head_dim] shape the attention
matmuls take (no per-token gather, no transposed copy).

Fragmentation (internal) = allocated-but-unused slots in partially filled last blocks
divided by all allocated slots. Blocks are only ever partially filled at a sequence's end,
so this is the whole waste of a paged pool (external fragmentation is zero by design).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from sizewise.errors import SizewiseError


@dataclass(frozen=True)
class KVLayout:
    """What one token stores per layer. kind='gqa': K and V of shape (kv_heads, head_dim);
    kind='mla': the compressed latent of `latent_dim` = kv_lora_rank + qk_rope_head_dim values."""

    kind: str
    num_layers: int
    dtype: torch.dtype = torch.float32
    num_kv_heads: int = 0
    head_dim: int = 0
    latent_dim: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("gqa", "mla"):
            raise ValueError(f"unknown KV layout {self.kind!r}")

    @property
    def values_per_token_per_layer(self) -> int:
        if self.kind == "gqa":
            return 2 * self.num_kv_heads * self.head_dim
        return self.latent_dim

    @property
    def bytes_per_token(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * self.values_per_token_per_layer * elem


class PoolExhausted(Exception):
    """Not enough free blocks: the scheduler preempts instead of failing the request."""


class KVPool:
    """Block allocator + block tables + the preallocated cache tensors."""

    def __init__(self, layout: KVLayout, num_blocks: int, block_size: int = 16, *, allocate: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise SizewiseError(f"KV pool needs at least one block of at least one slot (got {num_blocks} x {block_size}): raise --kv-memory")
        self.layout = layout
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}  # tokens of capacity reserved per sequence
        self.peak_used_blocks = 0
        n_slots = num_blocks * block_size if allocate else 0
        L = layout.num_layers
        if layout.kind == "gqa":
            shape = (layout.num_kv_heads, n_slots, layout.head_dim)  # head-major, see the module doc
            self.k = [torch.zeros(shape, dtype=layout.dtype) for _ in range(L)]
            self.v = [torch.zeros(shape, dtype=layout.dtype) for _ in range(L)]
            self.latent: list[torch.Tensor] = []
        else:
            self.k, self.v = [], []
            self.latent = [torch.zeros((n_slots, layout.latent_dim), dtype=layout.dtype) for _ in range(L)]

    @classmethod
    def from_bytes(cls, layout: KVLayout, kv_memory_bytes: int, block_size: int = 16, **kw) -> "KVPool":
        return cls(layout, kv_memory_bytes // cls.block_bytes_for(layout, block_size), block_size, **kw)

    @staticmethod
    def block_bytes_for(layout: KVLayout, block_size: int) -> int:
        return layout.bytes_per_token * block_size

    # -- accounting --------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        return self.block_bytes_for(self.layout, self.block_size)

    @property
    def total_bytes(self) -> int:
        return self.block_bytes * self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def fragmentation(self) -> float:
        """Allocated-but-unused slots / allocated slots (0 when nothing is allocated)."""
        allocated = sum(len(t) for t in self.tables.values()) * self.block_size
        if allocated == 0:
            return 0.0
        used = sum(self.lengths.values())
        return (allocated - used) / allocated

    def leaked_blocks(self) -> int:
        """Blocks neither free nor owned by a live table: must always be 0."""
        owned = sum(len(t) for t in self.tables.values())
        return self.num_blocks - len(self._free) - owned

    # -- allocation --------------------------------------------------------------------
    def can_reserve(self, seq_id: int, n_tokens: int, reserve_blocks: int = 0) -> bool:
        have = len(self.tables.get(seq_id, ()))
        return self.blocks_needed(n_tokens) - have + reserve_blocks <= len(self._free)

    def reserve(self, seq_id: int, n_tokens: int) -> None:
        """Make the sequence's table hold at least n_tokens slots; PoolExhausted if it can't (nothing changes then)."""
        table = self.tables.setdefault(seq_id, [])
        extra = self.blocks_needed(n_tokens) - len(table)
        if extra > len(self._free):
            if not table:
                del self.tables[seq_id]
            raise PoolExhausted(f"need {extra} blocks, {len(self._free)} free")
        for _ in range(max(extra, 0)):
            table.append(self._free.popleft())
        self.lengths[seq_id] = max(self.lengths.get(seq_id, 0), n_tokens)
        self.peak_used_blocks = max(self.peak_used_blocks, self.used_blocks)

    def free(self, seq_id: int) -> int:
        """Return a sequence's blocks to the pool (idempotent); returns how many were freed."""
        table = self.tables.pop(seq_id, [])
        self.lengths.pop(seq_id, None)
        self._free.extend(table)
        return len(table)

    def slots(self, seq_id: int, start: int, end: int) -> list[int]:
        """Flat slot indices for token positions [start, end) of a sequence."""
        table, bs = self.tables[seq_id], self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def block_tensor(self, seq_ids: list[int], lengths: list[int]) -> torch.Tensor:
        """[B, nb] block ids covering positions 0..length-1 of each sequence, nb = the most any needs
        (shorter tables are padded with block 0: the attention mask hides those positions)."""
        nb = max(self.blocks_needed(n) for n in lengths)
        out = torch.zeros((len(seq_ids), nb), dtype=torch.long)
        for b, (sid, n) in enumerate(zip(seq_ids, lengths)):
            k = self.blocks_needed(n)
            out[b, :k] = torch.tensor(self.tables[sid][:k], dtype=torch.long)
        return out

    def slot_tensor(self, seq_ids: list[int], lengths: list[int], width: int) -> torch.Tensor:
        """[B, width] slots of positions 0..width-1 per sequence (positions past its length point at slot 0; mask them)."""
        out = torch.zeros((len(seq_ids), width), dtype=torch.long)
        bs = self.block_size
        pos = torch.arange(width)
        for b, (sid, n) in enumerate(zip(seq_ids, lengths)):
            table = torch.tensor(self.tables[sid], dtype=torch.long)
            p = pos[:n]
            out[b, :n] = table[p // bs] * bs + p % bs
        return out
