"""Layout search: which TP x PP x DP (x EP) layouts fit a model on N devices, and how fast each decodes.

Serving follows vLLM's semantics, because that is what the launch command will run:
  * TP shards attention heads and MLP columns within a node; it must divide the attention heads,
    and GQA kv heads shard down to one head per rank and then replicate (vLLM requires kv_heads % tp
    == 0 or tp % kv_heads == 0). Embeddings and the LM head are vocab-parallel (shard by TP).
    MLA's down-projections (q_a_proj, kv_a_proj_with_mqa) are replicated, and so is the MLA latent
    KV cache: every TP rank holds the whole latent for its sequences.
  * PP splits the layers into contiguous stages (stages <= layers); the first stage holds the
    embedding, the last the final norm and LM head.
  * DP runs replicas of attention; the requested batch is spread over them. Dense models' replicas are
    independent. For MoE models vLLM forms ONE expert group of size DP x TP over all replicas
    (docs "Data Parallel Deployment"): the routed experts are TP-sharded over DP x TP ranks by default.
  * EP (MoE only, --enable-expert-parallel): that DP x TP group holds whole experts instead
    (EP size = TP * DP); attention stays TP within a DP rank.
Norms, routers and buffers never shard. MTP layers (DeepSeek-V3/R1) are not loaded for plain
serving (vLLM loads them only for speculative decoding) and are left out of the weights.

The roofline is a first-order model, with every constant stated below: decode is bandwidth-bound
(bytes read per step / HBM bandwidth, floored by FLOPs at peak), plus two all-reduces per layer for
TP and two all-to-alls per MoE layer for EP; prefill is FLOPs / (TFLOPS x MFU).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

from sizewise.arch.inventory import ArchInfo, ParamInventory, TensorSpec
from sizewise.errors import SizewiseError
from sizewise.plan import sizing
from sizewise.plan.hardware import Accelerator
from sizewise.units import fmt_bytes

# --- stated assumptions ---------------------------------------------------------------------
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
PREFILL_MFU = 0.5  # share of dense peak TFLOPS a large prefill reaches (typical of FlashAttention-era kernels)
DECODE_MFU = 0.5  # same share for the compute floor of a decode step
TRAIN_MFU = 0.4  # model FLOPs utilisation assumed for training throughput
ALLREDUCE_LATENCY_S = {"fast": 8e-6, "pcie": 25e-6}  # fixed cost of one small all-reduce (NVLink/xGMI vs PCIe)
INTER_NODE_BANDWIDTH = 50e9  # bytes/s per GPU across nodes: one 400 Gb/s NIC per GPU (InfiniBand NDR)
INTER_NODE_LATENCY_S = 20e-6
PP_HOP_LATENCY_S = 10e-6  # send one stage's activations to the next
ACT_BYTES = 2  # activations travel in bf16

ASSUMPTIONS = (
    f"gpu_memory_utilization {GPU_MEMORY_UTILIZATION} (vLLM default): usable = memory x {GPU_MEMORY_UTILIZATION}",
    f"prefill at {PREFILL_MFU:.0%} of dense peak TFLOPS (fp8 peak when weights are fp8 and the device has FP8)",
    "decode: bytes read per step (weights on the device, experts actually routed to, KV at full context) / HBM bandwidth",
    f"TP: 2 all-reduces per layer, ring, {ALLREDUCE_LATENCY_S['fast'] * 1e6:.0f} us each over NVLink/xGMI, "
    f"{ALLREDUCE_LATENCY_S['pcie'] * 1e6:.0f} us over PCIe, plus bytes at half the bidirectional link rate",
    f"EP: 2 all-to-alls per MoE layer; across nodes {INTER_NODE_BANDWIDTH / 1e9:.0f} GB/s per GPU (400 Gb/s NIC)",
    "PP: a token crosses every stage in turn (no latency gain); with fewer sequences than stages the rest idle (bubble)",
    "MTP layers are not loaded (vLLM loads them only for speculative decoding)",
)


# --- layouts --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    ep: int = 1  # 1 = no expert parallelism; else tp * dp (vLLM --enable-expert-parallel)

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def expert_parallel(self) -> bool:
        return self.ep > 1

    def nodes(self, gpus_per_node: int) -> int:
        return ceil(self.devices / gpus_per_node)

    def label(self) -> str:
        s = f"TP{self.tp} PP{self.pp} DP{self.dp}"
        return s + (f" EP{self.ep}" if self.ep > 1 else "")


def check_cluster(gpus_per_node: int, nodes: int) -> None:
    if gpus_per_node < 1:
        raise SizewiseError(f"--gpus-per-node must be at least 1 (got {gpus_per_node})")
    if nodes < 1:
        raise SizewiseError(f"--nodes must be at least 1 (got {nodes})")


def tp_ok(arch: ArchInfo, tp: int) -> bool:
    """TP must divide the attention heads; kv heads must divide by TP or TP by them (vLLM's rule)."""
    if arch.num_attention_heads % tp:
        return False
    if arch.attention == "mla":
        return True  # MLA's heads are all query/output heads; the latent is replicated
    kv = arch.num_kv_heads
    return kv % tp == 0 or tp % kv == 0


def valid_tp_sizes(arch: ArchInfo, gpus_per_node: int) -> list[int]:
    """TP degrees that stay within one node and shard the heads evenly."""
    return [t for t in range(1, gpus_per_node + 1) if gpus_per_node % t == 0 and tp_ok(arch, t)]


def enumerate_layouts(arch: ArchInfo, gpus_per_node: int, nodes: int, *, exact: bool = False) -> list[Layout]:
    """Every TP x PP x DP (x EP for MoE) layout on at most nodes*gpus_per_node devices.

    exact=True keeps only layouts that use every device (training plans)."""
    check_cluster(gpus_per_node, nodes)
    n = gpus_per_node * nodes
    out: list[Layout] = []
    for tp in valid_tp_sizes(arch, gpus_per_node):
        for pp in range(1, min(arch.num_layers, n // tp) + 1):
            for dp in range(1, n // (tp * pp) + 1):
                if exact and tp * pp * dp != n:
                    continue
                if layout_ok(arch, Layout(tp, pp, dp)):
                    out.append(Layout(tp, pp, dp))
                ep = tp * dp
                if arch.num_experts > 0 and ep > 1 and arch.num_experts % ep == 0:
                    out.append(Layout(tp, pp, dp, ep))
    return out


def layout_ok(arch: ArchInfo, layout: Layout, weight_block: int = 0) -> bool:
    """Shapes a layout must divide: the dense MLP width by TP, and without EP the expert width by vLLM's
    DP x TP expert group (and, for block-quantized fp8, whole 128-wide blocks per rank, as vLLM checks)."""
    if arch.intermediate_size and arch.intermediate_size % layout.tp:
        return False
    if arch.num_experts and not layout.expert_parallel:
        group = layout.tp * layout.dp
        width = arch.moe_intermediate_size or arch.intermediate_size
        if width % group:
            return False
        if weight_block and group > 1 and (width // group) % weight_block:
            return False
    return True


# --- per-device memory ----------------------------------------------------------------------

def _layer_set(spec: TensorSpec, arch: ArchInfo) -> str:
    """Which layers a spec repeats over: 'all', 'dense' (non-MoE layers), 'moe', or 'global'."""
    if "{i}" not in spec.name:
        return "global"
    if arch.num_experts > 0 and arch.num_moe_layers:
        if spec.group in ("routed_experts", "shared_experts", "router"):
            return "moe"
        if spec.group == "mlp":
            return "dense"
    return "all"


def shard_divisor(spec: TensorSpec, arch: ArchInfo, layout: Layout) -> int:
    """How many ways one copy of this tensor is split across the ranks of a stage (1 = replicated)."""
    tp = layout.tp
    name = spec.name
    if spec.kind in ("norm", "router", "buffer") or spec.group in ("norms", "router"):
        return 1
    if spec.group == "routed_experts":
        return layout.ep if layout.expert_parallel else tp * layout.dp  # vLLM: one DP x TP expert group
    if spec.group == "attention":
        if "q_a_proj" in name or "kv_a_proj" in name:
            return 1  # MLA down-projections: ReplicatedLinear in vLLM
        if ".k_proj." in name or ".v_proj." in name:
            return min(tp, arch.num_kv_heads)  # one kv head per rank, then replicas
        if spec.kind == "bias" and ".o_proj." in name:
            return 1
    return tp


def stage_layers(num_layers: int, pp: int) -> list[range]:
    """Contiguous, as-even-as-possible split; the first (L % pp) stages take one extra layer."""
    base, extra = divmod(num_layers, pp)
    out, start = [], 0
    for s in range(pp):
        k = base + (1 if s < extra else 0)
        out.append(range(start, start + k))
        start += k
    return out


@dataclass
class DeviceMemory:
    """Bytes on the busiest device of a layout."""

    weights: int
    kv_cache: int
    activations: int
    overhead: int
    weights_by_group: dict[str, int] = field(default_factory=dict)
    replicated_weights: int = 0  # part of `weights` that TP does not shard (norms, routers, MLA down-proj)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    def to_dict(self) -> dict:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "overhead": self.overhead, "total": self.total, "replicated_weights": self.replicated_weights,
                "weights_by_group": self.weights_by_group}


@dataclass
class _Stage:
    """One pipeline stage on one device: weights it holds, what it reads per decode step."""

    layers: int
    moe_layers: int
    weights: int
    replicated: int
    by_group: dict[str, int]
    dense_weights: int  # weights read every step (everything but routed experts)
    expert_bytes_per_expert: float  # bytes of one routed expert (one layer) on this device
    experts_on_device: int  # routed experts per MoE layer held by this device
    activated_params: float  # params this device multiplies per token (FLOPs = 2x this x tokens)


class Sharder:
    """Precomputes per-layer and global bytes of an inventory in a format, then shards them per layout."""

    def __init__(self, inv: ParamInventory, weights_fmt: str):
        self.inv, self.arch, self.fmt = inv, inv.arch, weights_fmt
        a = inv.arch
        self.n_moe = a.num_moe_layers if a.num_experts > 0 else 0
        self.n_dense = a.num_layers - self.n_moe
        self._stages: dict = {}
        self._cache: dict = {}
        self.specs = []  # (spec, bytes of all copies, layer set)
        for spec in inv.tensors:
            if spec.group == "mtp":
                continue
            self.specs.append((spec, sizing.spec_bytes(spec, weights_fmt, a), _layer_set(spec, a)))

    def _count(self, ls: str) -> int:
        return {"all": self.arch.num_layers, "moe": self.n_moe, "dense": self.n_dense}.get(ls, 1) or 1

    def stage(self, layout: Layout, layers: range, first: bool, last: bool) -> _Stage:
        a = self.arch
        n_layers = len(layers)
        moe_here = sum(1 for i in layers if i >= self.n_dense) if self.n_moe else 0
        dense_here = n_layers - moe_here
        weights = replicated = 0.0
        dense_weights = expert_bytes = 0.0
        activated = 0.0
        by_group: dict[str, float] = {}
        for spec, nbytes, ls in self.specs:
            if ls == "global":
                on_stage = (spec.group == "embedding" and (first or (last and a.tie_word_embeddings))) or \
                           (spec.group != "embedding" and last)
                frac = 1.0 if on_stage else 0.0
            else:
                here = {"all": n_layers, "moe": moe_here, "dense": dense_here}[ls]
                frac = here / self._count(ls)
            if not frac:
                continue
            div = shard_divisor(spec, a, layout)
            b = nbytes * frac / div
            weights += b
            by_group[spec.group] = by_group.get(spec.group, 0.0) + b
            if div == 1 and layout.tp > 1:
                replicated += b
            if spec.group == "routed_experts":
                expert_bytes += b  # turned into a per-expert figure below
                # top-k of the experts per token, counted as spread over the TP ranks only; the DP x TP
                # expert group (or EP) spreads it wider, so this is the conservative side
                activated += spec.activated * frac / layout.tp
            else:
                dense_weights += b
                if spec.kind != "embedding" or (last and a.tie_word_embeddings):  # a lookup is no matmul,
                    activated += spec.total * frac / div                          # a tied LM head is
        experts_on_device = 0
        per_expert = 0.0
        if a.num_experts and moe_here:
            experts_on_device = a.num_experts // layout.ep if layout.expert_parallel else a.num_experts
            per_expert = expert_bytes / (moe_here * experts_on_device)
        return _Stage(n_layers, moe_here, int(weights), int(replicated), {k: int(v) for k, v in by_group.items()},
                      int(dense_weights), per_expert, experts_on_device, activated)

    def stages(self, layout: Layout) -> list[_Stage]:
        """Per-stage figures, cached: DP changes them only through the MoE expert group (DP x TP)."""
        key = (layout.tp, layout.pp, layout.ep, layout.dp if self.arch.num_experts else 1)
        if key not in self._stages:
            parts = stage_layers(self.arch.num_layers, layout.pp)
            self._stages[key] = [self.stage(layout, r, i == 0, i == len(parts) - 1) for i, r in enumerate(parts)]
        return self._stages[key]

    def kv_total(self, context: int, batch: int, kv_dtype: str) -> int:
        key = ("kv", context, batch, kv_dtype)
        if key not in self._cache:
            self._cache[key] = sizing.kv_cache_bytes(self.arch, context, batch, kv_dtype)
        return self._cache[key]

    def runtime(self, context: int, batch: int) -> sizing.Runtime:
        key = ("rt", context, batch)
        if key not in self._cache:
            self._cache[key] = sizing.runtime(self.inv, self.fmt, context, batch)
        return self._cache[key]


def kv_divisor(arch: ArchInfo, tp: int) -> int:
    """MLA latent: replicated on every TP rank. GQA/MHA: kv heads shard down to one per rank."""
    if arch.attention == "mla" and arch.kv_lora_rank:
        return 1
    return min(tp, arch.num_kv_heads)


# --- plans ----------------------------------------------------------------------------------

@dataclass
class ServePlan:
    layout: Layout
    memory: DeviceMemory
    usable_bytes: int
    fits: bool
    decode_tok_s_per_seq: float
    decode_tok_s_total: float
    prefill_s: float
    nodes: int
    batch_per_replica: int
    pp_bubble: float  # share of stage time idle because fewer sequences than stages
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tp": self.layout.tp, "pp": self.layout.pp, "dp": self.layout.dp, "ep": self.layout.ep,
                "devices": self.layout.devices, "nodes": self.nodes, "per_device": self.memory.to_dict(),
                "usable_bytes": self.usable_bytes, "fits": self.fits,
                "decode_tok_s_per_seq": self.decode_tok_s_per_seq, "decode_tok_s_total": self.decode_tok_s_total,
                "prefill_s": self.prefill_s, "batch_per_replica": self.batch_per_replica,
                "pp_bubble": self.pp_bubble, "notes": self.notes}


@dataclass
class ServeRequest:
    weights: str = "bf16"
    context: int = 4096
    batch: int = 1
    kv_dtype: str = "bf16"
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION


def _allreduce_s(hw: Accelerator, tp: int, nbytes: float, cross_node: bool) -> float:
    if tp <= 1:
        return 0.0
    if cross_node:
        bw, lat = INTER_NODE_BANDWIDTH, INTER_NODE_LATENCY_S
    else:
        bw, lat = hw.link_bandwidth, ALLREDUCE_LATENCY_S["fast" if hw.has_fast_link else "pcie"]
    return lat + 2 * (tp - 1) / tp * nbytes / bw if bw else lat


def _alltoall_s(hw: Accelerator, ep: int, nbytes: float, cross_node: bool) -> float:
    if ep <= 1:
        return 0.0
    bw = INTER_NODE_BANDWIDTH if cross_node else hw.link_bandwidth
    lat = INTER_NODE_LATENCY_S if cross_node else ALLREDUCE_LATENCY_S["fast" if hw.has_fast_link else "pcie"]
    return lat + (ep - 1) / ep * nbytes / bw if bw else lat


def _attention_flops(arch: ArchInfo, tokens: int, context: int) -> float:
    """QK^T and AV for `tokens` new tokens against `context` cached ones (causal halves a prefill)."""
    dqk = (arch.qk_nope_head_dim or 0) + (arch.qk_rope_head_dim or 0) if arch.attention == "mla" else arch.head_dim
    dv = arch.v_head_dim or arch.head_dim
    return 2.0 * arch.num_layers * arch.num_attention_heads * (dqk + dv) * tokens * context


def plan_layout(sh: Sharder, hw: Accelerator, layout: Layout, req: ServeRequest, gpus_per_node: int) -> ServePlan:
    """Memory on the busiest device and the roofline decode/prefill figures for one layout."""
    a = sh.arch
    b_rep = ceil(req.batch / layout.dp)
    active_replicas = min(layout.dp, req.batch)
    stages = sh.stages(layout)
    kv_total = sh.kv_total(req.context, b_rep, req.kv_dtype)
    kv_layer = kv_total / a.num_layers / kv_divisor(a, layout.tp)
    acts = sh.runtime(req.context, b_rep).activations
    worst = max(stages, key=lambda s: s.weights + s.layers * kv_layer)
    kv_dev = int(worst.layers * kv_layer)
    mem = DeviceMemory(worst.weights, kv_dev, acts, sizing.device_overhead(worst.weights, kv_dev, acts),
                       worst.by_group, worst.replicated)
    usable = int(hw.memory_bytes * req.gpu_memory_utilization)
    nodes = layout.nodes(gpus_per_node)
    moe = a.num_experts > 0
    expert_group = layout.tp * layout.dp if moe else 1  # vLLM's DP x TP expert group
    group_cross_node = expert_group > gpus_per_node
    multi_node_ep = layout.expert_parallel and group_cross_node
    # decode: a micro-batch of m sequences, m = b_rep / min(pp, b_rep) micro-batches in flight
    n_micro = min(layout.pp, b_rep)
    m = ceil(b_rep / n_micro)
    tokens_to_experts = m * active_replicas  # every DP rank's tokens reach the shared expert group
    flops_rate = hw.tflops(sh.fmt) * 1e12
    t_token = 0.0
    for st in stages:
        read = st.dense_weights + st.layers * kv_layer * m / b_rep
        if st.moe_layers and a.num_experts:
            p_hit = 1.0 - (1.0 - a.experts_per_token / a.num_experts) ** tokens_to_experts
            read += st.moe_layers * st.experts_on_device * p_hit * st.expert_bytes_per_expert
        t_mem = read / hw.hbm_bandwidth
        t_cmp = 2.0 * st.activated_params * m / (flops_rate * DECODE_MFU)
        t_comm = st.layers * 2 * _allreduce_s(hw, layout.tp, m * a.hidden_size * ACT_BYTES, False)
        if layout.expert_parallel:
            msg = m * a.hidden_size * ACT_BYTES * a.experts_per_token
            t_comm += st.moe_layers * 2 * _alltoall_s(hw, layout.ep, msg, multi_node_ep)
        elif moe and layout.dp > 1:  # all-gather the DP ranks' tokens, reduce-scatter the expert outputs
            msg = tokens_to_experts * a.hidden_size * ACT_BYTES
            t_comm += st.moe_layers * 2 * _allreduce_s(hw, expert_group, msg / 2, group_cross_node)
        t_token += max(t_mem, t_cmp) + t_comm
    cross = layout.nodes(gpus_per_node) > 1 and layout.pp > 1
    t_token += (layout.pp - 1) * (INTER_NODE_LATENCY_S if cross else PP_HOP_LATENCY_S)
    per_seq = 1.0 / t_token
    total = active_replicas * b_rep / t_token
    bubble = 1.0 - n_micro / layout.pp
    # prefill of one prompt of `context` tokens: stages run one after another, each on tp devices
    act = sum(st.activated_params for st in stages)  # per device of each stage; x tp = the model
    flops = 2.0 * act * layout.tp * req.context + _attention_flops(a, req.context, req.context) / 2
    t_pre = flops / (layout.tp * hw.tflops(sh.fmt) * 1e12 * PREFILL_MFU)
    t_pre = max(t_pre, sum(st.weights for st in stages) / hw.hbm_bandwidth)
    t_pre += a.num_layers * 2 * _allreduce_s(hw, layout.tp, req.context * a.hidden_size * ACT_BYTES, False)
    if layout.expert_parallel:
        msg = req.context * a.hidden_size * ACT_BYTES * a.experts_per_token
        t_pre += sh.n_moe * 2 * _alltoall_s(hw, layout.ep, msg, multi_node_ep)
    notes = []
    if mem.replicated_weights:
        notes.append(f"{fmt_bytes(mem.replicated_weights)} of weights not sharded by TP (norms, routers"
                     + (", MLA down-projections" if a.attention == "mla" else "") + ")")
    if a.attention == "mla" and layout.tp > 1:
        notes.append("MLA latent KV is replicated on every TP rank (not sharded)")
    elif a.attention != "mla" and layout.tp > a.num_kv_heads:
        notes.append(f"TP {layout.tp} > {a.num_kv_heads} kv heads: kv heads replicated {layout.tp // a.num_kv_heads}x")
    if bubble > 0:
        notes.append(f"PP bubble: {bubble:.0%} of stage time idle ({b_rep} sequence(s) per replica < {layout.pp} stages)")
    if layout.dp > req.batch:
        notes.append(f"{layout.dp - req.batch} DP replica(s) idle at batch {req.batch}")
    return ServePlan(layout, mem, usable, mem.total <= usable, per_seq, total, t_pre, nodes, b_rep, bubble, notes)


def rank_key(p: ServePlan):
    """Fitting first, then decode throughput, then fewer devices, then lower latency.
    Layouts that do not fit rank by how close they come (least memory per device first)."""
    if p.fits:
        return (0, -round(p.decode_tok_s_total, 6), p.layout.devices, -p.decode_tok_s_per_seq)
    return (1, p.memory.total, p.layout.devices, -p.decode_tok_s_total)


@dataclass
class ServeResult:
    model: str
    hardware: Accelerator
    request: ServeRequest
    gpus_per_node: int
    nodes: int
    plans: list[ServePlan]
    remedy: str | None
    assumptions: list[str]

    @property
    def best(self) -> ServePlan | None:
        return self.plans[0] if self.plans else None

    @property
    def any_fits(self) -> bool:
        return any(p.fits for p in self.plans)


def _validate_request(req: ServeRequest, inv: ParamInventory) -> None:
    if req.context < 1:
        raise SizewiseError(f"--context must be at least 1 token (got {req.context})")
    if req.batch < 1:
        raise SizewiseError(f"--batch must be at least 1 sequence (got {req.batch})")
    if not 0 < req.gpu_memory_utilization <= 1:
        raise SizewiseError("gpu_memory_utilization must be in (0, 1]")
    if req.kv_dtype.lower() not in sizing.KV_DTYPES:
        raise SizewiseError(f"unknown --kv-dtype {req.kv_dtype!r}; choose one of {', '.join(sizing.KV_DTYPES)}")
    req.weights = sizing.check_format(req.weights)
    req.kv_dtype = req.kv_dtype.lower()
    if inv.arch.num_layers < 1 or inv.arch.num_attention_heads < 1:
        raise SizewiseError("the model has no layers or no attention heads: check its config.json")


def search_serving(inv: ParamInventory, hw: Accelerator, req: ServeRequest, gpus_per_node: int,
                   nodes: int) -> list[ServePlan]:
    sh = Sharder(inv, req.weights)
    block = 128 if req.weights == "fp8" else 0  # 128x128 weight blocks must not straddle ranks
    layouts = [lay for lay in enumerate_layouts(inv.arch, gpus_per_node, nodes) if layout_ok(inv.arch, lay, block)]
    if not layouts:
        raise SizewiseError(f"no TP size up to {gpus_per_node} divides the {inv.arch.num_attention_heads} attention "
                            f"heads / {inv.arch.num_kv_heads} kv heads: change --gpus-per-node")
    return sorted((plan_layout(sh, hw, lay, req, gpus_per_node) for lay in layouts), key=rank_key)


def _min_nodes(inv: ParamInventory, hw: Accelerator, req: ServeRequest, gpus_per_node: int,
               start: int, limit: int = 128) -> tuple[int, ServePlan] | None:
    """Smallest node count (> start) with a fitting layout, searching the cheap layouts only (DP 1)."""
    sh = Sharder(inv, req.weights)
    tps = valid_tp_sizes(inv.arch, gpus_per_node)
    if not tps:
        return None
    tp = max(tps)
    for n in range(start + 1, limit + 1):
        for pp in range(max(1, (n - 1) * gpus_per_node // tp + 1), min(inv.arch.num_layers, n * gpus_per_node // tp) + 1):
            cands = [Layout(tp, pp, 1)]
            if inv.arch.num_experts and tp > 1 and inv.arch.num_experts % tp == 0:
                cands.append(Layout(tp, pp, 1, tp))
            for lay in cands:
                if not layout_ok(inv.arch, lay, 128 if req.weights == "fp8" else 0):
                    continue
                p = plan_layout(sh, hw, lay, req, gpus_per_node)
                if p.fits:
                    return n, p
        if n * gpus_per_node // tp >= inv.arch.num_layers:
            return None
    return None


def remedy_for(inv: ParamInventory, hw: Accelerator, req: ServeRequest, gpus_per_node: int, nodes: int,
               plans: list[ServePlan]) -> str:
    """Nothing fits: name a smaller weight format that does, and how many nodes the asked format needs."""
    best = plans[0]
    need, have = best.memory.total, best.usable_bytes
    parts = [f"nothing fits: the best layout ({best.layout.label()}) needs {need / 1e9:.1f} GB per device, "
             f"{hw.name} offers {have / 1e9:.1f} GB usable ({req.gpu_memory_utilization:.0%} of {hw.memory_bytes / 1e9:.0f} GB)"]
    current = sizing.model_bytes(inv, req.weights)
    smaller = []
    for f in sizing.format_names():
        try:
            size = sizing.model_bytes(inv, f)
        except SizewiseError:
            continue
        if size < current:
            smaller.append((size, f))
    for size, f in sorted(smaller, reverse=True):  # the least lossy first
        r2 = ServeRequest(f, req.context, req.batch, req.kv_dtype, req.gpu_memory_utilization)
        fit = [p for p in search_serving(inv, hw, r2, gpus_per_node, nodes) if p.fits]
        if fit:
            parts.append(f"--weights {f} fits ({fit[0].layout.label()}, {fit[0].memory.total / 1e9:.1f} GB per device)")
            break
    mn = _min_nodes(inv, hw, req, gpus_per_node, nodes)
    if mn:
        n, p = mn
        parts.append(f"or keep {req.weights} on {n} node(s) x {gpus_per_node} {hw.name} "
                     f"({p.layout.label()}, {p.layout.devices} devices)")
    if best.memory.kv_cache > 0.3 * need:
        parts.append("or shrink the KV cache (--kv-dtype fp8, a shorter --context or a smaller --batch)")
    if len(parts) == 1:
        parts.append("no weight format or node count up to 128 makes it fit: use a larger device")
    return "; ".join(parts)


def plan_serving(inv: ParamInventory, hw: Accelerator, *, gpus_per_node: int = 8, nodes: int = 1,
                 weights: str = "bf16", context: int = 4096, batch: int = 1, kv_dtype: str = "bf16",
                 gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION) -> ServeResult:
    """All serving layouts ranked (fitting first, then decode throughput, then fewer devices)."""
    check_cluster(gpus_per_node, nodes)
    req = ServeRequest(weights, context, batch, kv_dtype, gpu_memory_utilization)
    _validate_request(req, inv)
    plans = search_serving(inv, hw, req, gpus_per_node, nodes)
    remedy = None if any(p.fits for p in plans) else remedy_for(inv, hw, req, gpus_per_node, nodes, plans)
    assumptions = list(ASSUMPTIONS) + [
        "weights and KV cache: size.formats.tensor_bytes / size.memory.kv_cache_bytes, sharded per layout",
        f"activations per replica: {sizing.runtime(inv, req.weights, context, 1).formula} (not divided by TP)",
        sizing.OVERHEAD_NOTE]
    if hw.rough:
        assumptions.append(f"{hw.name}: bandwidth and FLOPS are ROUGH estimates, not datasheet figures")
    if req.weights == "fp8" and hw.fp8_tflops is None:
        assumptions.append(f"{hw.name} has no FP8 tensor cores: fp8 weights run weight-only (W8A16) at bf16 peak")
    return ServeResult(inv.name, hw, req, gpus_per_node, nodes, plans, remedy, assumptions)


# --- training -------------------------------------------------------------------------------

RECOMPUTE_ORDER = ("none", "selective", "full")
GLOBAL_BATCH_SEQS = 128  # sequences per optimizer step assumed for every layout (0.5M tokens at seq 4096)
RECOMPUTE_COST = {"none": 1.0, "selective": 1.03, "full": 4 / 3}  # extra forward: 8/6 of FLOPs for full


@dataclass
class TrainPlan:
    layout: Layout
    zero: int
    recompute: str
    per_gpu_bytes: int
    states_bytes: int
    activations_bytes: int
    usable_bytes: int
    fits: bool
    grad_accum: int
    tokens_per_s: float
    pp_bubble: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tp": self.layout.tp, "pp": self.layout.pp, "dp": self.layout.dp, "devices": self.layout.devices,
                "zero": self.zero, "recompute": self.recompute, "per_gpu_bytes": self.per_gpu_bytes,
                "states_bytes": self.states_bytes, "activations_bytes": self.activations_bytes,
                "usable_bytes": self.usable_bytes, "fits": self.fits,
                "gradient_accumulation_steps": self.grad_accum, "tokens_per_s": self.tokens_per_s,
                "pp_bubble": self.pp_bubble, "notes": self.notes}


@dataclass
class TrainResult:
    model: str
    hardware: Accelerator
    gpus_per_node: int
    nodes: int
    zero: int
    seq: int
    micro_batch: int
    plans: list[TrainPlan]
    remedy: str | None
    assumptions: list[str]

    @property
    def best(self) -> TrainPlan | None:
        return self.plans[0] if self.plans else None


def _train_tokens_per_s(inv: ParamInventory, hw: Accelerator, lay: Layout, zero: int, seq: int, micro: int,
                        gas: int, flops_per_token: float, gpus_per_node: int) -> float:
    """Tokens/s over all replicas: 1F1B stages of compute + TP all-reduces, then the DP/ZeRO collectives.

    Per micro-batch a stage computes micro*seq*flops/(pp*tp) at TRAIN_MFU and runs 4 all-reduces per
    layer (2 forward, 2 backward) of micro*seq*hidden bf16 values over its TP group; a step takes
    (GA + PP - 1) stage slots. Gradients then reduce over DP (2 x bytes of this rank's bf16 params), and
    ZeRO-3 gathers the weights twice per micro-batch; none of it is assumed hidden behind compute
    (a lower bound on throughput)."""
    a = inv.arch
    stage_s = micro * seq * flops_per_token / (lay.pp * lay.tp * hw.bf16_tflops * 1e12 * TRAIN_MFU)
    stage_s += ceil(a.num_layers / lay.pp) * 4 * _allreduce_s(hw, lay.tp, micro * seq * a.hidden_size * ACT_BYTES,
                                                              False)
    step_s = (gas + lay.pp - 1) * stage_s
    if lay.dp > 1:
        rank_bytes = 2 * inv.total / (lay.tp * lay.pp)
        volume = 2 * rank_bytes * (lay.dp - 1) / lay.dp  # gradient reduce (reduce-scatter + all-gather)
        if zero >= 3:
            volume += 2 * gas * rank_bytes * (lay.dp - 1) / lay.dp  # weights gathered in fwd and bwd per micro-batch
        bw = INTER_NODE_BANDWIDTH if lay.devices > gpus_per_node else hw.link_bandwidth or INTER_NODE_BANDWIDTH
        step_s += volume / bw
    return lay.dp * gas * micro * seq / step_s


def plan_training(inv: ParamInventory, hw: Accelerator, *, gpus_per_node: int = 8, nodes: int = 1, zero: int = 3,
                  seq: int = 4096, micro_batch: int = 1, optimizer: str = "adamw") -> TrainResult:
    """TP x PP x DP layouts over all devices with a ZeRO stage; per layout the lightest recompute that fits.

    Model states come from size.training with DP = ZeRO's shard count and TP; PP divides them by the
    stages. Activations are not divided by PP: under 1F1B the first stage keeps PP micro-batches of
    L/PP layers in flight, the same as one micro-batch of all L layers (Korthikanti et al. 2022).
    """
    check_cluster(gpus_per_node, nodes)
    if zero not in (0, 1, 2, 3):
        raise SizewiseError(f"--zero must be 0, 1, 2 or 3 (got {zero})")
    if seq < 1 or micro_batch < 1:
        raise SizewiseError("--seq and --micro-batch must be at least 1")
    a = inv.arch
    usable = int(hw.memory_bytes * 0.95)
    plans: list[TrainPlan] = []
    act_params = inv.activated
    attn = _attention_flops(a, seq, seq) / 2 / seq  # per token, forward
    for lay in enumerate_layouts(a, gpus_per_node, nodes, exact=True):
        if lay.expert_parallel:
            continue  # training EP is a Megatron/DeepSpeed-MoE matter; plans here use TP x PP x DP
        chosen = None
        for rc in RECOMPUTE_ORDER:
            t = sizing.training_numbers(inv, optimizer, zero, lay.dp, rc, seq, micro_batch, lay.tp)
            states = int(t.states / lay.pp)
            total = states + t.activations
            chosen = (rc, states, t.activations, total)
            if total <= usable:
                break
        rc, states, acts, total = chosen
        gas = max(1, ceil(GLOBAL_BATCH_SEQS / (lay.dp * micro_batch)))
        bubble = (lay.pp - 1) / (gas + lay.pp - 1)
        flops_per_token = (6 * act_params + 3 * attn) * RECOMPUTE_COST[rc]
        tok_s = _train_tokens_per_s(inv, hw, lay, zero, seq, micro_batch, gas, flops_per_token, gpus_per_node)
        notes = []
        if zero >= 2 and lay.pp > 1:
            notes.append("DeepSpeed's pipeline engine supports ZeRO-1 only: PP>1 with ZeRO-2/3 needs Megatron-style PP")
        if lay.tp > 1 or lay.pp > 1:
            notes.append("TP/PP need a Megatron-DeepSpeed (or Megatron-LM) model; plain DeepSpeed shards by ZeRO only")
        plans.append(TrainPlan(lay, zero, rc, total, states, acts, usable, total <= usable, gas, tok_s, bubble, notes))
    # fitting first; then layouts DeepSpeed can run as configured (no PP with ZeRO-2/3); then throughput
    plans.sort(key=lambda p: (not p.fits, zero >= 2 and p.layout.pp > 1, -p.tokens_per_s, p.layout.tp * p.layout.pp))
    remedy = None
    if plans and not any(p.fits for p in plans):
        b = min(plans, key=lambda p: p.per_gpu_bytes)
        parts = [f"nothing fits: the closest layout ({b.layout.label()}, recompute {b.recompute}) needs "
                 f"{b.per_gpu_bytes / 1e9:.1f} GB per GPU, {hw.name} offers {usable / 1e9:.1f} GB"]
        full = sizing.training_numbers(inv, optimizer, 3, 1, "full", seq, micro_batch, 1)
        room = usable - full.activations
        if room > 0:
            gpus = ceil(full.states / room)
            parts.append(f"ZeRO-3 with full recompute needs at least {gpus} GPUs "
                         f"({ceil(gpus / gpus_per_node)} node(s) of {gpus_per_node})")
        if zero < 3:
            parts.append("--zero 3 shards the weights too")
        parts.append("or offload optimizer states to CPU (DeepSpeed offload_optimizer), or a shorter --seq")
        remedy = "; ".join(parts)
    assumptions = ["usable = 95% of device memory (CUDA context, allocator fragmentation)",
                   "model states and activations: size.training.training_memory (DP = ZeRO shards, TP); "
                   "PP divides the model states by the stages",
                   f"throughput at {TRAIN_MFU:.0%} MFU of dense bf16 peak, 6 x activated params FLOPs per token "
                   "(+ attention; full recompute x 4/3), plus TP all-reduces (4 per layer) and DP/ZeRO "
                   "collectives, not overlapped with compute",
                   f"global batch {GLOBAL_BATCH_SEQS} sequences per step for every layout: gradient accumulation = "
                   f"ceil({GLOBAL_BATCH_SEQS} / (DP x micro-batch)); PP bubble (PP-1)/(GA+PP-1)"]
    return TrainResult(inv.name, hw, gpus_per_node, nodes, zero, seq, micro_batch, plans, remedy, assumptions)
