"""Training memory: bytes per parameter, ZeRO sharding, Korthikanti activations."""
from __future__ import annotations

from dataclasses import replace

import pytest

from sizewise.errors import SizewiseError
from sizewise.size.training import activation_bytes, training_memory
from size_helpers import dense_inventory


@pytest.fixture(scope="module")
def inv():
    return dense_inventory(layers=4, hidden=512, heads=8, kv_heads=8, vocab=1024, inter=2048)


@pytest.mark.parametrize("opt,per_param", [("adamw", 16), ("adamw-8bit", 10), ("sgd", 12)])
def test_bytes_per_param(inv, opt, per_param):
    t = training_memory(inv, optimizer=opt)
    assert t.weights + t.grads + t.optimizer_states == per_param * inv.total


def test_zero_stages_shard_by_hand(inv):
    p, g = inv.total, 8
    assert p % g == 0  # keeps the hand arithmetic exact
    parts = {z: training_memory(inv, zero=z, gpus=g) for z in range(4)}
    assert (parts[0].weights, parts[0].grads, parts[0].optimizer_states) == (2 * p, 2 * p, 12 * p)
    assert (parts[1].weights, parts[1].grads, parts[1].optimizer_states) == (2 * p, 2 * p, 12 * p // g)
    assert (parts[2].weights, parts[2].grads, parts[2].optimizer_states) == (2 * p, 2 * p // g, 12 * p // g)
    assert (parts[3].weights, parts[3].grads, parts[3].optimizer_states) == (2 * p // g, 2 * p // g, 12 * p // g)
    for z, t in parts.items():
        assert t.per_gpu_bytes == t.weights + t.grads + t.optimizer_states + t.activations
        assert t.total_bytes == g * t.per_gpu_bytes


def test_korthikanti_activations_by_hand(inv):
    a = inv.arch
    s, b, h, heads, L, v = 1024, 2, 512, 8, 4, 1024
    head = 4 * s * b * h + 4 * s * b * v
    assert activation_bytes(a, s, b, "none") == L * s * b * h * (34 + 5 * heads * s / h) + head
    assert activation_bytes(a, s, b, "selective") == L * 34 * s * b * h + head
    assert activation_bytes(a, s, b, "full") == L * 2 * s * b * h + head
    # tensor + sequence parallelism divides every term
    assert activation_bytes(a, s, b, "none", tp=4) == (L * s * b * h * (34 + 5 * heads * s / h) + head) / 4


def test_moe_layers_count_activated_experts():
    base = dense_inventory(layers=4, hidden=512, heads=8, kv_heads=8, vocab=1024, inter=2048)
    # 2 MoE layers whose 2 routed + 0 shared experts of width 1024 equal the 4h = 2048 MLP width:
    moe = replace(base.arch, num_experts=16, experts_per_token=2, moe_intermediate_size=1024, num_moe_layers=2)
    assert activation_bytes(moe, 512, 1, "selective") == activation_bytes(base.arch, 512, 1, "selective")
    narrow = replace(moe, experts_per_token=1)  # half the MLP width on 2 of 4 layers: 19sbh/2 less each
    s, b, h = 512, 1, 512
    assert activation_bytes(moe, s, b, "selective") - activation_bytes(narrow, s, b, "selective") == 2 * 19 / 2 * s * b * h


@pytest.mark.parametrize("kw", [dict(zero=5), dict(zero=-1), dict(gpus=0), dict(optimizer="adam9"),
                                dict(recompute="some"), dict(seq=0), dict(micro_batch=0), dict(tp=0)])
def test_bad_arguments(inv, kw):
    with pytest.raises(SizewiseError):
        training_memory(inv, **kw)
