"""Launch commands parsed back with shlex: their flags must describe the layout they were built for."""
from __future__ import annotations

import json
import shlex

import pytest

from sizewise.errors import SizewiseError
from sizewise.plan.launch import (deepspeed_command, deepspeed_config, deepspeed_json, sglang_commands,
                                  vllm_command, vllm_commands, vllm_multinode_hint)
from sizewise.plan.parallel import Layout


def flags(cmd: str) -> dict[str, str | bool]:
    """--flag value pairs (bare flags -> True) after the positional part."""
    toks = shlex.split(cmd)
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.startswith("--"):
            if i + 1 < len(toks) and not toks[i + 1].startswith("--"):
                out[t] = toks[i + 1]
                i += 2
                continue
            out[t] = True
        i += 1
    return out


LAYOUTS = [Layout(8, 1, 1), Layout(4, 2, 1), Layout(2, 1, 4), Layout(4, 1, 2, 8), Layout(8, 2, 1, 8), Layout(1, 1, 1)]


@pytest.mark.parametrize("lay", LAYOUTS, ids=lambda lay: lay.label())
def test_vllm_flags_match_layout(lay):
    cmd = vllm_command("deepseek-ai/DeepSeek-V3", lay, "bf16", 8192)
    toks = shlex.split(cmd)
    assert toks[:3] == ["vllm", "serve", "deepseek-ai/DeepSeek-V3"]
    f = flags(cmd)
    tp, pp = int(f["--tensor-parallel-size"]), int(f["--pipeline-parallel-size"])
    dp = int(f.get("--data-parallel-size", 1))
    assert (tp, pp, dp) == (lay.tp, lay.pp, lay.dp)
    assert tp * pp * dp == lay.devices
    assert ("--enable-expert-parallel" in f) == (lay.ep > 1)
    if lay.ep > 1:
        assert tp * dp == lay.ep  # vLLM: EP group = TP x DP
    assert f["--max-model-len"] == "8192"


def test_vllm_quantization_and_kv_flags():
    lay = Layout(2, 1, 1)
    online = flags(vllm_command("m", lay, "fp8", 4096, native_fmt="bf16", kv_dtype="fp8"))
    assert online["--quantization"] == "fp8" and online["--kv-cache-dtype"] == "fp8"
    native = flags(vllm_command("m", lay, "fp8", 4096, native_fmt="fp8"))
    assert "--quantization" not in native and "--kv-cache-dtype" not in native
    assert flags(vllm_command("m", lay, "bf16", 4096, native_fmt="fp16"))["--dtype"] == "bfloat16"
    assert flags(vllm_command("m", lay, "nf4", 4096))["--quantization"] == "bitsandbytes"
    multi = flags(vllm_command("m", Layout(8, 2, 1), "bf16", 4096, nodes=2, gpus_per_node=8))
    assert multi["--distributed-executor-backend"] == "ray"


def test_vllm_rejects_ep_other_than_tp_times_dp():
    with pytest.raises(SizewiseError):
        vllm_command("m", Layout(4, 1, 2, 4), "bf16", 4096)


def test_ray_hint_only_for_several_nodes():
    assert vllm_multinode_hint(1) == []
    hint = "\n".join(vllm_multinode_hint(3))
    assert "ray start --head" in hint and "ray start --address=" in hint and "2 other node(s)" in hint


@pytest.mark.parametrize("lay", LAYOUTS, ids=lambda lay: lay.label())
def test_sglang_flags_match_layout(lay):
    nodes = 2 if lay.devices > 8 else 1
    cmds = sglang_commands("deepseek-ai/DeepSeek-V3", lay, "bf16", 4096, nodes=nodes)
    assert len(cmds) == nodes
    for rank, cmd in enumerate(cmds):
        assert shlex.split(cmd)[:3] == ["python", "-m", "sglang.launch_server"]
        f = flags(cmd)
        assert f["--model-path"] == "deepseek-ai/DeepSeek-V3"
        tp, dp, pp = int(f["--tp"]), int(f.get("--dp", 1)), int(f.get("--pp-size", 1))
        # SGLang: with DP attention the DP ranks live inside the TP group; plain DP multiplies it
        devices = tp * pp if "--enable-dp-attention" in f else tp * dp * pp
        assert devices == lay.devices
        if lay.ep > 1:
            assert int(f["--ep-size"]) == lay.ep == tp
        else:
            assert "--ep-size" not in f and tp == lay.tp
        assert f["--context-length"] == "4096"
        if nodes > 1:
            assert f["--nnodes"] == str(nodes) and f["--node-rank"] == str(rank) and ":" in f["--dist-init-addr"]
        else:
            assert "--nnodes" not in f


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_deepspeed_json_has_the_stage(zero):
    cfg = json.loads(deepspeed_json(deepspeed_config(zero, micro_batch=2, grad_accum=4, dp=8)))
    assert cfg["zero_optimization"]["stage"] == zero
    assert cfg["bf16"]["enabled"] is True
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 2 * 4 * 8
    if zero >= 1:
        assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"  # offload off by default
    with pytest.raises(SizewiseError):
        deepspeed_config(5, 1, 1, 1)


def test_deepspeed_command():
    f = flags(deepspeed_command(8, 2))
    assert f["--num_gpus"] == "8" and f["--num_nodes"] == "2" and f["--hostfile"] == "hostfile"
    assert f["--deepspeed_config"] == "ds_config.json"
    assert "--hostfile" not in flags(deepspeed_command(4, 1))


def test_vllm_multinode_dp_one_line_per_node_ranks_add_up():
    lay = Layout(4, 1, 4)  # 4 replicas of TP4 on 2 nodes of 8: two replicas per node, no Ray
    cmds = vllm_commands("m", lay, "bf16", 4096, nodes=2, gpus_per_node=8)
    assert len(cmds) == 2
    f0, f1 = flags(cmds[0]), flags(cmds[1])
    assert f0["--data-parallel-size"] == f1["--data-parallel-size"] == "4"
    assert int(f0["--data-parallel-size-local"]) + int(f1["--data-parallel-size-local"]) == lay.dp
    assert "--headless" not in f0 and f1["--headless"] is True
    assert f1["--data-parallel-start-rank"] == f0["--data-parallel-size-local"]
    assert f0["--data-parallel-address"] == f1["--data-parallel-address"]
    assert "--distributed-executor-backend" not in f0
    assert "ray start" not in "\n".join(vllm_multinode_hint(2, lay, 8))


def test_vllm_replica_spanning_nodes_uses_ray():
    lay = Layout(8, 2, 1)
    cmds = vllm_commands("m", lay, "bf16", 4096, nodes=2, gpus_per_node=8)
    assert len(cmds) == 1 and flags(cmds[0])["--distributed-executor-backend"] == "ray"
    assert "ray start --head" in "\n".join(vllm_multinode_hint(2, lay, 8))
