"""DeepSeek families against published numbers and transformers' own models.

Expected values here come from outside this code: the HF API's safetensors counts of
deepseek-ai/DeepSeek-V3 (BF16 3,918,786,560 + F8_E4M3 680,571,043,840 + F32 41,555,600), the
published totals in sizewise/arch/presets/SOURCES.md, DeepSeek's published activated figures, and
the tensor layout of the last checkpoint shard (model.layers.61.*).
"""
from __future__ import annotations

import math

import pytest

from sizewise.arch.families import inventory_from_config, match_tensor
from sizewise.arch.presets import find_preset

V3_WITHOUT_MTP = 671_026_419_200
HF_V3_BF16, HF_V3_F8, HF_V3_F32 = 3_918_786_560, 680_571_043_840, 41_555_600


@pytest.fixture(scope="module")
def v3():
    return inventory_from_config(find_preset("deepseek-v3").config(), "deepseek-v3")


def test_v3_full_size_matches_transformers_and_published(v3, meta_counts):
    total, groups, _ = meta_counts(find_preset("deepseek-v3").config())
    assert total == V3_WITHOUT_MTP  # transformers builds the model without the MTP layer
    assert v3.total_without_mtp == V3_WITHOUT_MTP
    ours = {g: c.total for g, c in v3.groups().items() if g != "mtp"}
    assert ours == groups


def test_v3_on_disk_total_matches_hf_dtype_breakdown(v3):
    """All stored tensors: BF16 + FP8 weights are our parameters except the FP32 router score biases;
    the remaining FP32 values are the FP8 128x128 block scales of every FP8 matrix (eh_proj is BF16)."""
    score_bias = sum(t.total for t in v3.tensors if t.name.endswith("e_score_correction_bias"))
    assert score_bias == 256 * 59  # 58 MoE layers + the MTP layer
    assert v3.total - score_bias == HF_V3_BF16 + HF_V3_F8
    fp8 = [t for t in v3.tensors if t.kind == "linear" and not t.name.endswith("eh_proj.weight")]
    assert sum(t.total for t in fp8) == HF_V3_F8
    scales = sum(math.ceil(t.shape[0] / 128) * math.ceil(t.shape[1] / 128) * t.copies for t in fp8)
    assert scales + score_bias == HF_V3_F32


def test_v3_mtp_layer_layout(v3):
    """The MTP module as stored in model-00163-of-000163.safetensors of DeepSeek-V3."""
    on_disk = {  # name -> shape, from the published checkpoint index/headers
        "model.layers.61.embed_tokens.weight": (129280, 7168),
        "model.layers.61.enorm.weight": (7168,),
        "model.layers.61.hnorm.weight": (7168,),
        "model.layers.61.eh_proj.weight": (7168, 14336),
        "model.layers.61.shared_head.norm.weight": (7168,),
        "model.layers.61.shared_head.head.weight": (129280, 7168),
        "model.layers.61.self_attn.kv_a_proj_with_mqa.weight": (576, 7168),
        "model.layers.61.mlp.experts.255.down_proj.weight": (7168, 2048),
        "model.layers.61.mlp.shared_experts.up_proj.weight": (2048, 7168),
        "model.layers.61.mlp.gate.weight": (256, 7168),
        "model.layers.61.mlp.gate.e_score_correction_bias": (256,),
        "model.layers.61.input_layernorm.weight": (7168,),
    }
    for name, shape in on_disk.items():
        spec = match_tensor(v3, name)
        assert spec is not None and spec.group == "mtp" and spec.shape == shape, name
    assert match_tensor(v3, "model.layers.60.mlp.experts.255.down_proj.weight").group == "routed_experts"
    assert match_tensor(v3, "model.layers.60.self_attn.q_a_layernorm.weight").group == "norms"
    assert match_tensor(v3, "model.layers.62.enorm.weight") is None
    # DeepSeek's README_WEIGHTS: "11.5B unique" MTP parameters besides the shared embedding and head
    assert 11.5e9 <= v3.mtp - 2 * 129280 * 7168 < 11.7e9
    assert v3.arch.num_mtp_layers == 1


def test_v3_arch_info(v3):
    a = v3.arch
    assert a.attention == "mla"
    assert (a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.q_lora_rank, a.v_head_dim) == (512, 64, 128, 1536, 128)
    assert a.kv_lora_rank + a.qk_rope_head_dim == 576  # the latent MLA caches per token per layer
    assert (a.num_experts, a.experts_per_token, a.num_shared_experts, a.moe_intermediate_size) == (256, 8, 1, 2048)
    assert a.num_moe_layers == 58 and a.num_layers == 61


def test_v2_lite_has_no_q_lora():
    inv = inventory_from_config(find_preset("deepseek-v2-lite").config())
    assert inv.arch.q_lora_rank is None
    assert any(t.name.endswith("self_attn.q_proj.weight") for t in inv.tensors)
    assert not any("q_a_proj" in t.name for t in inv.tensors)
    assert inv.mtp == 0


# (preset, published activated, unit of the published figure's last digit)
PUBLISHED_ACTIVATED = [
    ("deepseek-v3", 37e9, 1e9),
    ("deepseek-r1", 37e9, 1e9),
    ("deepseek-v2", 21e9, 1e9),
    ("deepseek-v2-lite", 2.4e9, 0.1e9),
    ("deepseek-moe-16b-base", 2.8e9, 0.1e9),
]


@pytest.mark.parametrize("preset,published,unit", PUBLISHED_ACTIVATED)
def test_activated_matches_published_rounded_figure(preset, published, unit):
    """Published figures are rounded, and some leave out the input embedding (a row lookup, not a
    matmul): the published figure must lie within one unit of its last digit of our count with or
    without the embedding."""
    inv = inventory_from_config(find_preset(preset).config())
    embedding = inv.groups()["embedding"].total
    low, high = inv.activated - embedding, inv.activated
    assert low - unit < published < high + unit
    assert inv.activated < inv.total / 4  # sparse: most parameters idle per token


def test_mixtral_activated_exact():
    inv = inventory_from_config(find_preset("mixtral-8x7b-v0.1").config())
    assert inv.activated == 12_879_925_248  # Mistral's published figure


def test_deepseek_moe_16b_hand_count():
    """DeepSeek-MoE (model_type "deepseek") is remote code only, not in transformers: check it against
    its tensor list written out by hand from modeling_deepseek.py, and against the published total."""
    inv = inventory_from_config(find_preset("deepseek-moe-16b-base").config())
    h, v, dense_i, moe_i, layers = 2048, 102400, 10944, 1408, 28
    attn = 4 * h * h  # q, k, v, o (16 heads x 128, no GQA, no bias)
    norms = 2 * h
    dense_layer = attn + 3 * h * dense_i + norms  # layer 0 (first_k_dense_replace = 1)
    moe_layer = attn + 64 * 3 * h * moe_i + 3 * h * (2 * moe_i) + 64 * h + norms  # experts, shared x2, gate
    hand = 2 * v * h + h + dense_layer + (layers - 1) * moe_layer
    assert inv.total == hand == 16_375_728_128
    g = inv.groups()
    assert g["shared_experts"].total == (layers - 1) * 3 * h * 2 * moe_i
    assert g["router"].total == (layers - 1) * 64 * h
    assert g["routed_experts"].activated == (layers - 1) * 6 * 3 * h * moe_i
    assert inv.arch.num_moe_layers == 27 and inv.arch.attention == "mha"


def test_moe_layer_freq_follows_remote_code():
    """modeling_deepseek.py: MoE where layer >= first_k_dense_replace and layer % moe_layer_freq == 0."""
    cfg = dict(model_type="deepseek", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=7,
               num_attention_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
               moe_intermediate_size=16, first_k_dense_replace=1, moe_layer_freq=2)
    inv = inventory_from_config(cfg)
    assert inv.arch.num_moe_layers == 3  # layers 2, 4, 6
    dense = [t for t in inv.tensors if t.group == "mlp"]
    assert all(t.copies == 4 for t in dense)  # layers 0, 1, 3, 5
