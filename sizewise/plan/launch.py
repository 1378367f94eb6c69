"""Engine launch commands for a layout: vLLM, SGLang, and DeepSpeed for training.

Flags as the engines document them (checked November 2026):
  * vLLM engine arguments, https://docs.vllm.ai/en/latest/configuration/engine_args/ :
    --tensor-parallel-size, --pipeline-parallel-size, --data-parallel-size, --enable-expert-parallel
    ("the EP size is computed automatically" as TP x DP, docs "Expert Parallel Deployment",
    https://docs.vllm.ai/en/latest/serving/expert_parallel_deployment/), --quantization (fp8 quantizes a
    bf16/fp16 checkpoint online; bitsandbytes loads 4-bit in flight; pre-quantized checkpoints are read
    from their config's quantization_config, no flag), --kv-cache-dtype {auto,fp8,fp8_e4m3,fp8_e5m2},
    --max-model-len, --gpu-memory-utilization, --dtype, --distributed-executor-backend ray.
    A replica (TP x PP) spanning nodes needs a Ray cluster (docs "Parallelism and Scaling" and
    examples/online_serving/multi-node-serving.sh): `ray start --head` on one node,
    `ray start --address=<head>:6379` on the others, then `vllm serve` on the head. Whole DP replicas
    per node run one `vllm serve` per node instead (docs "Data Parallel Deployment"):
    --data-parallel-size-local, --data-parallel-start-rank, --data-parallel-address,
    --data-parallel-rpc-port, --headless on all but the first; or --data-parallel-backend ray.
    For MoE, "expert layers form a tensor parallel group of size DP x TP" unless EP is enabled.
  * SGLang server arguments, https://docs.sglang.io/advanced_features/server_arguments.html :
    --model-path, --tp (the TP group spans every GPU of the engine, across nodes), --dp, --enable-dp-attention
    (DP for attention inside the TP group, the MLA recipe), --ep-size, --pp-size, --quantization fp8,
    --kv-cache-dtype fp8_e4m3, --context-length, --mem-fraction-static, and for multi-node
    --nnodes N --node-rank R --dist-init-addr HOST:PORT (one command per node).
  * DeepSpeed, https://www.deepspeed.ai/docs/config-json/ and https://www.deepspeed.ai/getting-started/ :
    zero_optimization.stage, bf16.enabled, train_micro_batch_size_per_gpu, gradient_accumulation_steps,
    train_batch_size = micro x accumulation x DP; launcher `deepspeed --num_gpus G (per node) --num_nodes N
    --hostfile hostfile train.py --deepspeed --deepspeed_config ds_config.json`.
"""
from __future__ import annotations

import json
import shlex

from sizewise.errors import SizewiseError
from sizewise.plan.parallel import Layout

HEAD_PLACEHOLDER = "<HEAD_NODE_IP>"
RAY_PORT = 6379
DP_RPC_PORT = 13345
SGLANG_PORT = 50000

# weight format -> how vLLM / SGLang serve it when the checkpoint is NOT already stored that way
_DTYPE_FLAG = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_KV_VLLM = {"fp8": "fp8"}
_KV_SGLANG = {"fp8": "fp8_e4m3"}


def _join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def is_compressed_tensors(native_fmt: str | None) -> bool:
    """Native formats that only a compressed-tensors quantization_config produces (commands/plan.native_format)."""
    return bool(native_fmt) and (native_fmt.lower().startswith("int4-ct-") or native_fmt.lower() == "int8")


def _weight_flags(weights_fmt: str, native_fmt: str | None) -> tuple[list[str], list[str]]:
    """(flags, notes) that make an engine serve `weights_fmt`, given what the checkpoint already stores."""
    w = weights_fmt.lower()
    if native_fmt and w == native_fmt.lower() and is_compressed_tensors(w):
        return ["--quantization", "compressed-tensors"], [
            f"the checkpoint stores {w} in compressed-tensors layout (`sizewise export --to vllm`): "
            "--quantization compressed-tensors names the config the engine reads, and fails fast if it says otherwise"]
    if native_fmt and w == native_fmt.lower():
        how = "its dtype" if w in _DTYPE_FLAG else "its quantization_config"
        return [], [f"the checkpoint is already {w}: the engine reads {how}, no flag needed"]
    if w in _DTYPE_FLAG:
        return ["--dtype", _DTYPE_FLAG[w]], []
    if w == "fp8":
        return ["--quantization", "fp8"], ["--quantization fp8 quantizes the bf16/fp16 checkpoint to fp8 at load "
                                           "(per-tensor scales, not the 128x128 blocks sized here)"]
    if w.startswith("nf4"):
        return ["--quantization", "bitsandbytes"], ["bitsandbytes quantizes to NF4 at load"]
    return [], [f"{w}: serve a checkpoint already quantized to it (e.g. exported by `sizewise compress` in "
                "compressed-tensors layout, or GPTQ/AWQ int4; GGUF files load in vLLM by path); "
                "the engine reads the scheme from its config, so no --quantization flag is printed"]


def vllm_multinode_mode(layout: Layout, gpus_per_node: int) -> str:
    """How vLLM spans nodes: 'single' (one node), 'dp' (whole replicas per node: one `vllm serve` per node with
    --data-parallel-size-local, no Ray), or 'ray' (a replica's TP x PP spans nodes: a Ray cluster)."""
    if layout.devices <= gpus_per_node:
        return "single"
    replica = layout.tp * layout.pp
    if layout.dp > 1 and replica <= gpus_per_node and gpus_per_node % replica == 0:
        return "dp"
    return "ray"


def _dp_ranks_per_node(layout: Layout, gpus_per_node: int) -> list[int]:
    per = gpus_per_node // (layout.tp * layout.pp)
    out, left = [], layout.dp
    while left > 0:
        out.append(min(per, left))
        left -= out[-1]
    return out


def vllm_command(model_id: str, layout: Layout, weights_fmt: str, context: int, *, kv_dtype: str = "bf16",
                 native_fmt: str | None = None, gpu_memory_utilization: float = 0.9, nodes: int = 1,
                 gpus_per_node: int = 8, node_rank: int = 0) -> str:
    """`vllm serve` for a layout (the head node's line when it spans nodes; see `vllm_commands`).

    TP x PP x DP ranks; --enable-expert-parallel turns vLLM's DP x TP expert group into EP."""
    if context < 1:
        raise SizewiseError("context must be at least 1 token")
    args = ["vllm", "serve", model_id,
            "--tensor-parallel-size", str(layout.tp),
            "--pipeline-parallel-size", str(layout.pp)]
    if layout.dp > 1:
        args += ["--data-parallel-size", str(layout.dp)]
    if layout.expert_parallel:
        if layout.ep != layout.tp * layout.dp:
            raise SizewiseError(f"vLLM's EP size is TP x DP = {layout.tp * layout.dp}, not {layout.ep}")
        args.append("--enable-expert-parallel")
    args += _weight_flags(weights_fmt, native_fmt)[0]
    if kv_dtype.lower() in _KV_VLLM:
        args += ["--kv-cache-dtype", _KV_VLLM[kv_dtype.lower()]]
    args += ["--max-model-len", str(context), "--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    mode = vllm_multinode_mode(layout, gpus_per_node) if nodes > 1 else "single"
    if mode == "dp":
        local = _dp_ranks_per_node(layout, gpus_per_node)
        if not 0 <= node_rank < len(local):
            raise SizewiseError(f"node rank {node_rank} outside 0..{len(local) - 1}")
        args += ["--data-parallel-size-local", str(local[node_rank])]
        if node_rank > 0:
            args += ["--data-parallel-start-rank", str(sum(local[:node_rank])), "--headless"]
        args += ["--data-parallel-address", HEAD_PLACEHOLDER, "--data-parallel-rpc-port", str(DP_RPC_PORT)]
    elif mode == "ray":
        args += ["--distributed-executor-backend", "ray"]
        if layout.dp > 1:
            args += ["--data-parallel-backend", "ray"]
    return _join(args)


def vllm_commands(model_id: str, layout: Layout, weights_fmt: str, context: int, *, nodes: int = 1,
                  gpus_per_node: int = 8, **kw) -> list[str]:
    """Every `vllm serve` line to run: one per node in DP mode, the head's only otherwise (Ray starts the rest)."""
    if nodes > 1 and vllm_multinode_mode(layout, gpus_per_node) == "dp":
        n = len(_dp_ranks_per_node(layout, gpus_per_node))
        return [vllm_command(model_id, layout, weights_fmt, context, nodes=nodes, gpus_per_node=gpus_per_node,
                             node_rank=r, **kw) for r in range(n)]
    return [vllm_command(model_id, layout, weights_fmt, context, nodes=nodes, gpus_per_node=gpus_per_node, **kw)]


def vllm_multinode_hint(nodes: int, layout: Layout | None = None, gpus_per_node: int = 8) -> list[str]:
    """What to start before `vllm serve` when the layout spans nodes."""
    if nodes <= 1:
        return []
    if layout is not None and vllm_multinode_mode(layout, gpus_per_node) == "dp":
        return [f"# vLLM multi-node data parallel ({nodes} nodes, no Ray): run line i on node i; node 0 serves "
                f"the API, the others run --headless and reach it at {HEAD_PLACEHOLDER}:{DP_RPC_PORT}"]
    lines = [f"# vLLM multi-node needs a Ray cluster ({nodes} nodes; `pip install ray` on all):",
             f"ray start --head --port={RAY_PORT}  # on the head node",
             f"ray start --address={HEAD_PLACEHOLDER}:{RAY_PORT}  # on each of the {nodes - 1} other node(s)",
             "# then run the vllm serve line on the head node (ray status should list all GPUs)"]
    if layout is not None and layout.dp > 1:
        lines.append('# a DP replica spanning nodes: export VLLM_RAY_DP_PACK_STRATEGY="span" before vllm serve')
    return lines


def sglang_command(model_id: str, layout: Layout, weights_fmt: str, context: int, *, kv_dtype: str = "bf16",
                   native_fmt: str | None = None, nodes: int = 1, node_rank: int = 0,
                   mem_fraction: float = 0.9) -> str:
    """`python -m sglang.launch_server` for one node of a layout.

    SGLang's --tp counts every GPU of the TP group, so vLLM's TP x DP with EP becomes
    `--tp TP*DP --dp DP --enable-dp-attention --ep-size TP*DP` (attention data-parallel, experts over all
    ranks); plain DP replicas stay `--tp TP --dp DP`."""
    if not 0 <= node_rank < nodes:
        raise SizewiseError(f"node rank {node_rank} outside 0..{nodes - 1}")
    args = ["python", "-m", "sglang.launch_server", "--model-path", model_id]
    if layout.expert_parallel:
        group = layout.tp * layout.dp
        args += ["--tp", str(group)]
        if layout.dp > 1:
            args += ["--dp", str(layout.dp), "--enable-dp-attention"]
        args += ["--ep-size", str(layout.ep)]
    else:
        args += ["--tp", str(layout.tp)]
        if layout.dp > 1:
            args += ["--dp", str(layout.dp)]
    if layout.pp > 1:
        args += ["--pp-size", str(layout.pp)]
    flags = _weight_flags(weights_fmt, native_fmt)[0]
    if flags[:1] == ["--dtype"] or flags[:2] in (["--quantization", "fp8"], ["--quantization", "bitsandbytes"],
                                                  ["--quantization", "compressed-tensors"]):
        args += flags
    if kv_dtype.lower() in _KV_SGLANG:
        args += ["--kv-cache-dtype", _KV_SGLANG[kv_dtype.lower()]]
    args += ["--context-length", str(context), "--mem-fraction-static", f"{mem_fraction:g}"]
    if nodes > 1:
        args += ["--nnodes", str(nodes), "--node-rank", str(node_rank),
                 "--dist-init-addr", f"{HEAD_PLACEHOLDER}:{SGLANG_PORT}"]
    return _join(args)


def sglang_commands(model_id: str, layout: Layout, weights_fmt: str, context: int, *, nodes: int = 1,
                    **kw) -> list[str]:
    """One SGLang command per node (node ranks 0..nodes-1)."""
    return [sglang_command(model_id, layout, weights_fmt, context, nodes=nodes, node_rank=r, **kw)
            for r in range(nodes)]


def serve_notes(layout: Layout, weights_fmt: str, kv_dtype: str, native_fmt: str | None,
                model_id: str = "") -> list[str]:
    notes = list(_weight_flags(weights_fmt, native_fmt)[1])
    if model_id.lower().endswith(".gguf"):
        notes.append("a single-file GGUF: vLLM loads it by path (add --tokenizer <the original HF repo>); "
                     "SGLang needs --load-format gguf")
    kv = kv_dtype.lower()
    if kv in ("int8", "int4"):
        notes.append(f"KV cache {kv}: vLLM and SGLang offer fp8 (e4m3/e5m2) KV caches only; the commands keep "
                     "the default (model dtype)")
    if layout.expert_parallel:
        notes.append("EP kernels: vLLM picks its all2all backend with --all2all-backend (DeepEP for multi-node); "
                     "SGLang with --moe-a2a-backend")
    return notes


# --- training -------------------------------------------------------------------------------

def deepspeed_config(zero: int, micro_batch: int, grad_accum: int, dp: int, *, bf16: bool = True,
                     offload: bool = False, gradient_clipping: float = 1.0) -> dict:
    """A DeepSpeed config for ZeRO `zero` over `dp` data-parallel ranks; offload off by default."""
    if zero not in (0, 1, 2, 3):
        raise SizewiseError(f"ZeRO stage must be 0-3 (got {zero})")
    if micro_batch < 1 or grad_accum < 1 or dp < 1:
        raise SizewiseError("micro batch, gradient accumulation and DP size must be at least 1")
    zo: dict = {"stage": zero, "overlap_comm": True, "contiguous_gradients": True}
    if zero >= 1:
        zo["offload_optimizer"] = {"device": "cpu" if offload else "none"}
    if zero == 3:
        zo["offload_param"] = {"device": "cpu" if offload else "none"}
        zo["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": micro_batch * grad_accum * dp,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "gradient_clipping": gradient_clipping,
        "zero_optimization": zo,
    }


def deepspeed_json(config: dict) -> str:
    return json.dumps(config, indent=2)


def deepspeed_command(gpus_per_node: int, nodes: int, *, script: str = "train.py",
                      config_path: str = "ds_config.json") -> str:
    """The launcher line: --num_gpus is per node; several nodes read their hosts from a hostfile."""
    if gpus_per_node < 1 or nodes < 1:
        raise SizewiseError("gpus per node and nodes must be at least 1")
    args = ["deepspeed", "--num_gpus", str(gpus_per_node), "--num_nodes", str(nodes)]
    if nodes > 1:
        args += ["--hostfile", "hostfile"]
    args += [script, "--deepspeed", "--deepspeed_config", config_path]
    return _join(args)
