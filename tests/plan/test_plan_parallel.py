"""Layout search: TP divisibility, EP only for MoE, per-device sharding, MLA KV replication, ranking, remedies."""
from __future__ import annotations

from dataclasses import replace

import pytest

from helpers_plan import tiny_llama, tiny_mixtral
from sizewise.arch.resolve import inventory_for
from sizewise.errors import SizewiseError
from sizewise.plan.hardware import get_hardware
from sizewise.plan.parallel import (Layout, ServeRequest, Sharder, enumerate_layouts, plan_layout, plan_serving,
                                    plan_training, stage_layers, valid_tp_sizes)
from sizewise.size.formats import size_in_format, tensor_bytes
from sizewise.size.memory import kv_cache_bytes

H100 = get_hardware("h100")


def test_tp_must_divide_heads_40_heads_8_kv_on_8_gpus():
    arch = tiny_llama(heads=40, kv_heads=8).arch
    assert valid_tp_sizes(arch, 8) == [1, 2, 4, 8]
    assert 16 not in valid_tp_sizes(arch, 16)  # 40 % 16 != 0
    assert valid_tp_sizes(arch, 6) == [1, 2]  # 3 and 6 do not divide 40
    for lay in enumerate_layouts(arch, 8, 2):
        assert 40 % lay.tp == 0 and 8 % lay.tp == 0
        assert lay.tp <= 8  # TP stays inside a node
        assert lay.devices <= 16 and lay.pp <= arch.num_layers


def test_tp_beyond_kv_heads_replicates_them():
    inv = tiny_llama(heads=32, kv_heads=4)
    assert 8 in valid_tp_sizes(inv.arch, 8)
    sh = Sharder(inv, "bf16")
    k = next(s for s in inv.tensors if ".k_proj." in s.name)
    kb = tensor_bytes(k, "bf16", inv.arch)
    st8 = sh.stages(Layout(8, 1, 1))[0]
    st4 = sh.stages(Layout(4, 1, 1))[0]
    # k_proj on a rank: a quarter at TP4 (one kv head each) and still a quarter at TP8 (replicated)
    assert st4.by_group["attention"] - st8.by_group["attention"] > 0
    p = plan_layout(sh, H100, Layout(8, 1, 1), ServeRequest(), 8)
    assert any("replicated" in n for n in p.notes)
    assert kb > 0


def test_ep_only_for_moe():
    dense = tiny_llama(heads=8, kv_heads=8).arch
    assert all(lay.ep == 1 for lay in enumerate_layouts(dense, 8, 2))
    moe = tiny_mixtral(experts=8).arch
    eps = [lay for lay in enumerate_layouts(moe, 8, 1) if lay.ep > 1]
    assert eps
    for lay in eps:
        assert lay.ep == lay.tp * lay.dp and 8 % lay.ep == 0


def test_exact_layouts_use_every_device():
    arch = tiny_llama(heads=8, kv_heads=8, layers=8).arch
    lays = enumerate_layouts(arch, 4, 2, exact=True)
    assert lays and all(lay.devices == 8 for lay in lays)
    assert Layout(4, 2, 1) in lays and Layout(1, 1, 8) in lays


def test_tp_shards_everything_but_norms():
    inv = tiny_llama(heads=8, kv_heads=8)
    total = size_in_format(inv, "bf16").bytes
    norms = sum(tensor_bytes(s, "bf16", inv.arch) for s in inv.tensors if s.group == "norms")
    st = Sharder(inv, "bf16").stages(Layout(2, 1, 1))[0]
    assert st.weights == pytest.approx((total - norms) / 2 + norms, abs=8)
    assert st.replicated == pytest.approx(norms, abs=8)


def test_pp_stages_partition_the_layers_and_the_weights():
    assert [len(r) for r in stage_layers(61, 4)] == [16, 15, 15, 15]
    inv = tiny_llama(heads=8, kv_heads=8, layers=6)
    total = size_in_format(inv, "bf16").bytes
    stages = Sharder(inv, "bf16").stages(Layout(1, 3, 1))
    assert len(stages) == 3 and sum(s.layers for s in stages) == 6
    assert sum(s.weights for s in stages) == pytest.approx(total, abs=8)
    assert "embedding" in stages[0].by_group and "embedding" not in stages[-1].by_group
    assert "lm_head" in stages[-1].by_group and "lm_head" not in stages[0].by_group


def test_ep_divides_routed_experts():
    inv = tiny_mixtral(experts=8)
    routed = sum(tensor_bytes(s, "bf16", inv.arch) for s in inv.tensors if s.group == "routed_experts")
    sh = Sharder(inv, "bf16")
    one = sh.stages(Layout(2, 1, 1))[0]  # computed first: the per-layout cache must not reuse it for DP 2
    assert one.by_group["routed_experts"] == pytest.approx(routed / 2, abs=8)
    ep = sh.stages(Layout(2, 1, 2, 4))[0]
    tp = sh.stages(Layout(2, 1, 2))[0]
    assert ep.by_group["routed_experts"] == pytest.approx(routed / 4, abs=8)
    assert ep.experts_on_device == 2
    # without EP vLLM still forms one DP x TP expert group: each rank holds 1/4 of every expert
    assert tp.by_group["routed_experts"] == pytest.approx(routed / 4, abs=8)
    assert tp.experts_on_device == 8
    # attention is TP-sharded within a DP rank only
    assert ep.by_group["attention"] == tp.by_group["attention"] == pytest.approx(
        sum(tensor_bytes(s, "bf16", inv.arch) for s in inv.tensors if s.group == "attention") / 2, abs=8)


def test_mla_latent_kv_is_replicated_gqa_kv_is_sharded():
    v2 = inventory_for("deepseek-v2-lite")
    assert v2.arch.attention == "mla"
    req = ServeRequest(weights="bf16", context=4096, batch=1)
    sh = Sharder(v2, "bf16")
    kv1 = plan_layout(sh, H100, Layout(1, 1, 1), req, 8).memory.kv_cache
    kv8 = plan_layout(sh, H100, Layout(8, 1, 1), req, 8).memory.kv_cache
    assert kv1 == kv8 == kv_cache_bytes(v2.arch, 4096, 1, "bf16")
    llama = tiny_llama(heads=8, kv_heads=8)
    sl = Sharder(llama, "bf16")
    g1 = plan_layout(sl, H100, Layout(1, 1, 1), req, 8).memory.kv_cache
    g2 = plan_layout(sl, H100, Layout(2, 1, 1), req, 8).memory.kv_cache
    assert g1 == kv_cache_bytes(llama.arch, 4096, 1, "bf16")
    assert g2 == pytest.approx(g1 / 2, abs=2)


def test_decode_is_bandwidth_bound_and_faster_on_faster_memory():
    inv = tiny_llama(heads=8, kv_heads=8, hidden=2048, inter=8192, layers=8, vocab=32000)
    req = ServeRequest(context=1024, batch=1)
    sh = Sharder(inv, "bf16")
    p = plan_layout(sh, H100, Layout(1, 1, 1), req, 8)
    bound = H100.hbm_bandwidth / p.memory.weights  # reading every weight once per token
    assert 0.3 * bound < p.decode_tok_s_per_seq <= bound * 1.01
    h200 = plan_layout(sh, get_hardware("h200"), Layout(1, 1, 1), req, 8)
    assert h200.decode_tok_s_per_seq > p.decode_tok_s_per_seq
    assert p.prefill_s > 0


def test_ranking_fits_first_then_throughput():
    res = plan_serving(inventory_for("llama-3.1-70b"), H100, gpus_per_node=8, nodes=1, weights="bf16", batch=4)
    fits = [p.fits for p in res.plans]
    assert fits == sorted(fits, reverse=True)  # all True before any False
    ok = [p for p in res.plans if p.fits]
    assert ok and all(a.decode_tok_s_total >= b.decode_tok_s_total - 1e-6 for a, b in zip(ok, ok[1:]))
    assert res.best.fits and res.best.layout.devices >= 2  # 141 GB of bf16 weights need >1 H100
    assert res.remedy is None


def test_nothing_fits_names_a_format_that_does():
    # weights must dominate the fixed 1 GiB runtime overhead: ~4 GB of bf16 weights, shapes only
    inv = tiny_llama(heads=32, kv_heads=8, hidden=4096, inter=14336, layers=8, vocab=32000)
    need = plan_serving(inv, H100, gpus_per_node=1, nodes=1, weights="bf16", context=256).best.memory.total
    small = replace(H100, name="small", memory_bytes=int(need / 0.9 * 0.8))  # 80 % of what bf16 needs
    res = plan_serving(inv, small, gpus_per_node=1, nodes=1, weights="bf16", context=256)
    assert not res.any_fits
    assert res.remedy.startswith("nothing fits")
    fmt = res.remedy.split("--weights ", 1)[1].split()[0]
    again = plan_serving(inv, small, gpus_per_node=1, nodes=1, weights=fmt, context=256)
    assert again.any_fits  # the remedy is true
    assert "node(s)" in res.remedy  # and how many devices bf16 would need


def test_deepseek_v3_fp8_needs_two_h100_nodes_fits_one_h200_node():
    v3 = inventory_for("deepseek-v3")
    one = plan_serving(v3, H100, gpus_per_node=8, nodes=1, weights="fp8")
    assert not one.any_fits and "2 node(s)" in one.remedy
    assert plan_serving(v3, H100, gpus_per_node=8, nodes=2, weights="fp8").any_fits
    assert plan_serving(v3, get_hardware("h200"), gpus_per_node=8, nodes=1, weights="fp8").any_fits


@pytest.mark.parametrize("kw", [dict(nodes=0), dict(gpus_per_node=0), dict(context=0), dict(batch=0),
                                dict(kv_dtype="fp4x"), dict(weights="int3")])
def test_bad_input_is_a_user_error(kw):
    args = dict(gpus_per_node=8, nodes=1)
    args.update(kw)
    with pytest.raises(SizewiseError):
        plan_serving(tiny_llama(), H100, **args)


def test_training_plans_use_all_devices_and_respect_zero():
    inv = inventory_for("llama-3.1-8b")
    res = plan_training(inv, H100, gpus_per_node=8, nodes=1, zero=3)
    assert res.plans and all(p.layout.devices == 8 for p in res.plans)
    assert res.best.fits and res.remedy is None
    z0 = plan_training(inv, H100, gpus_per_node=8, nodes=1, zero=0)
    same = [p for p in z0.plans if p.layout == res.best.layout]  # states do not depend on recompute
    assert same and same[0].states_bytes > res.best.states_bytes  # ZeRO-3 shards the model states
    tiny_gpu = replace(H100, memory_bytes=8 * 10**9)
    none = plan_training(inv, tiny_gpu, gpus_per_node=8, nodes=1, zero=3)
    assert not any(p.fits for p in none.plans) and "GPUs" in none.remedy
    with pytest.raises(SizewiseError):
        plan_training(inv, H100, zero=4)


def test_fp8_on_ampere_is_flagged_and_uses_bf16_peak():
    inv = tiny_llama(heads=8, kv_heads=8)
    a100 = get_hardware("a100")
    res = plan_serving(inv, a100, gpus_per_node=1, nodes=1, weights="fp8")
    assert any("W8A16" in a for a in res.assumptions)
    assert a100.tflops("fp8") == a100.bf16_tflops and H100.tflops("fp8") == H100.fp8_tflops


def test_moe_expert_group_must_divide_expert_width():
    # vLLM TP-shards every expert over the DP x TP group unless EP is on: 1408 is not divisible by 7
    arch = inventory_for("deepseek-v2-lite").arch
    assert arch.moe_intermediate_size % 7
    lays = enumerate_layouts(arch, 8, 1)
    assert all(arch.moe_intermediate_size % (lay.tp * lay.dp) == 0 for lay in lays if lay.ep == 1)
    assert not any(lay.tp * lay.dp == 7 for lay in lays)


def test_fp8_blocks_may_not_straddle_ranks():
    # DeepSeek-V3 experts are 2048 wide: 16 ranks keep whole 128-blocks (128 each), 32 would split them
    v3 = inventory_for("deepseek-v3")
    res = plan_serving(v3, get_hardware("h200"), gpus_per_node=8, nodes=4, weights="fp8")
    for p in res.plans:
        if p.layout.ep == 1:
            assert (2048 // (p.layout.tp * p.layout.dp)) % 128 == 0
    assert any(p.layout.tp * p.layout.dp == 32 and p.layout.ep == 32 for p in res.plans)  # EP lifts the limit
