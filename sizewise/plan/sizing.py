"""The one place plan/ asks size/ for numbers: tensor bytes, KV cache, activations, overhead, training memory.

plan/ shards these numbers per device; it does not derive them. size/ answers for a whole model
on one device, so the per-device split (what TP/PP/EP divide, what they replicate) lives in
parallel.py and only the per-device overhead is re-applied here with size.memory's own constants.
"""
from __future__ import annotations

from dataclasses import dataclass

from sizewise.arch.inventory import ArchInfo, ParamInventory, TensorSpec
from sizewise.size import memory as mem
from sizewise.size.formats import FORMATS, get_format, size_in_format, tensor_bytes
from sizewise.size.training import training_memory

KV_DTYPES = tuple(mem.KV_DTYPE_BITS)


def spec_bytes(spec: TensorSpec, fmt: str, arch: ArchInfo) -> int:
    """Bytes of all copies of one TensorSpec in a storage format."""
    return tensor_bytes(spec, fmt, arch)


def model_bytes(inv: ParamInventory, fmt: str) -> int:
    """Bytes of the served weights (MTP left out, as size.memory does for serving)."""
    served = ParamInventory(inv.name, inv.arch, [t for t in inv.tensors if t.group != "mtp"])
    return size_in_format(served, fmt).bytes


def format_names() -> list[str]:
    return list(FORMATS)


def check_format(fmt: str) -> str:
    return get_format(fmt).name


def kv_cache_bytes(arch: ArchInfo, context: int, batch: int, kv_dtype: str) -> int:
    """Whole-model KV cache (all layers) for `batch` sequences of `context` tokens; MLA caches the latent."""
    return mem.kv_cache_bytes(arch, context, batch, kv_dtype, latent=True)


@dataclass
class Runtime:
    """Per-replica transient activations of one prefill chunk (size.memory.activation_bytes)."""

    activations: int
    formula: str


def runtime(inv: ParamInventory, weights_fmt: str, context: int, batch: int) -> Runtime:
    a = mem.activation_bytes(inv.arch, context, batch, mem.activation_dtype_bytes(weights_fmt))
    return Runtime(a.bytes, a.formula)


def device_overhead(weights: int, kv: int, activations: int) -> int:
    """size.memory's overhead model applied to one device: fixed CUDA context + fragmentation share."""
    return mem.RUNTIME_FIXED_BYTES + int(mem.ALLOCATOR_FRAGMENTATION * (weights + kv + activations))


OVERHEAD_NOTE = (f"overhead per device: {mem.RUNTIME_FIXED_BYTES / 2**30:.0f} GiB CUDA context/workspaces + "
                 f"{mem.ALLOCATOR_FRAGMENTATION:.0%} allocator fragmentation (size.memory's assumptions)")


@dataclass
class TrainingNumbers:
    """Per-GPU training memory with DP=gpus, TP=tp (no PP): model states and activations apart."""

    states: int  # weights + grads + optimizer states after ZeRO sharding and TP
    activations: int

    @property
    def total(self) -> int:
        return self.states + self.activations


def training_numbers(inv: ParamInventory, optimizer: str, zero: int, gpus: int, recompute: str,
                     seq: int, micro_batch: int, tp: int) -> TrainingNumbers:
    m = training_memory(inv, optimizer, zero, gpus, recompute, seq, micro_batch, tp=tp)
    return TrainingNumbers(m.weights + m.grads + m.optimizer_states, m.activations)
