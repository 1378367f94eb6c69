"""Storage-format arithmetic against hand computations (and gguf's own block table)."""
from __future__ import annotations

import gguf
import pytest

from sizewise.errors import SizewiseError
from sizewise.size.formats import FORMATS, size_in_format, tensor_bytes, use_more_bits
from size_helpers import dense_inventory, one_matrix


def ggml(name: str) -> tuple[int, int]:
    """(block elements, block bytes) from the gguf package: an independent source."""
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]


def test_int4_g128_one_matrix_by_hand():
    # 4096x4096: nibbles = n/2 bytes; 32 groups per row, each with a bf16 scale and a bf16 zero
    s = size_in_format(one_matrix(4096, 4096), "int4-g128")
    assert s.bytes == 4096 * 4096 // 2 + 4096 * 32 * (2 + 2)
    assert s.quantized_params == 4096 * 4096 and s.kept_params == 0
    assert s.bits_per_quantized_weight == pytest.approx(4 + 32 / 128)
    # compressed-tensors layout: the zero is a 4-bit zero point
    ct = size_in_format(one_matrix(4096, 4096), "int4-ct-g128")
    assert ct.bytes == 4096 * 4096 // 2 + 4096 * 32 * (2 + 0.5)
    assert ct.bits_per_quantized_weight == pytest.approx(4 + 20 / 128)


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_group_sizes_bits(g):
    assert size_in_format(one_matrix(512, 1024), f"int4-g{g}").bits_per_quantized_weight == pytest.approx(4 + 32 / g)
    assert size_in_format(one_matrix(512, 1024), f"int4-ct-g{g}").bits_per_quantized_weight == pytest.approx(4 + 20 / g)


def test_int4_pads_rows_to_whole_groups():
    # 4100 columns -> 33 groups of 128 (last one padded): payload 33*128/2 bytes per row, a bf16
    # scale and a bf16 zero per group per row
    assert size_in_format(one_matrix(10, 4100), "int4-g128").bytes == 10 * (33 * 64 + 33 * 4)
    # compressed-tensors: zero points packed 8 rows per int32 (10 rows -> 2 int32s)
    assert size_in_format(one_matrix(10, 4100), "int4-ct-g128").bytes == 10 * (33 * 64 + 33 * 2) + 2 * 4 * 33


def test_fp8_block_scales_deepseek_layout():
    assert size_in_format(one_matrix(4096, 4096), "fp8").bytes == 4096 * 4096 + 32 * 32 * 4
    # partial edge blocks still get a scale: ceil(1000/128)=8, ceil(4100/128)=33
    assert size_in_format(one_matrix(1000, 4100), "fp8").bytes == 1000 * 4100 + 8 * 33 * 4


def test_int8_per_row_scale():
    assert size_in_format(one_matrix(300, 512), "int8").bytes == 300 * 512 + 300 * 2


def test_nf4_blocks_of_64():
    n = 256 * 512
    code_table = 16 * 4
    assert size_in_format(one_matrix(256, 512), "nf4").bytes == n // 2 + (n // 64) * 4 + code_table
    dq = size_in_format(one_matrix(256, 512), "nf4-dq").bytes
    blocks = n // 64
    assert dq == n // 2 + blocks + (blocks // 256) * 4 + 4 + 256 * 4 + code_table
    assert dq < size_in_format(one_matrix(256, 512), "nf4").bytes


@pytest.mark.parametrize("fmt,bpw", [("q8_0", 8.5), ("q4_0", 4.5), ("q6_k", 6.5625)])
def test_gguf_plain_types_match_gguf_table(fmt, bpw):
    blk, size = ggml(fmt.upper())
    s = size_in_format(one_matrix(512, 4096), fmt)
    assert s.bytes == 512 * 4096 // blk * size
    assert s.bits_per_quantized_weight == pytest.approx(bpw)


def test_float_formats_convert_everything():
    inv = dense_inventory()
    assert size_in_format(inv, "fp32").bytes == 4 * inv.total
    assert size_in_format(inv, "bf16").bytes == 2 * inv.total
    assert size_in_format(inv, "fp16").kept == []


def test_default_policy_keeps_embeddings_head_norms():
    inv = dense_inventory(layers=2, hidden=256, heads=4, kv_heads=2, vocab=1000, inter=512)
    s = size_in_format(inv, "int8")
    kept = [t for t in inv.tensors if t.kind != "linear"]
    lin = [t for t in inv.tensors if t.kind == "linear"]
    expected = sum(2 * t.total for t in kept) + sum(t.total + t.shape[0] * 2 * t.copies for t in lin)
    assert s.bytes == expected
    assert set(s.kept) == {"embedding", "lm_head", "norm"}
    assert s.kept_params == sum(t.total for t in kept)


def test_keep_kinds_override_quantizes_embedding():
    inv = dense_inventory(layers=1, hidden=256, heads=4, kv_heads=2, vocab=1024, inter=512)
    default = size_in_format(inv, "int4-g64")
    more = size_in_format(inv, "int4-g64", keep_kinds=("norm",))
    emb = 1024 * 256
    # embedding + head move from 2 bytes to nibbles + a bf16 scale and a bf16 zero per 64
    int4 = emb // 2 + emb // 64 * 4
    assert default.bytes - more.bytes == 2 * (emb * 2 - int4)
    with pytest.raises(SizewiseError):
        size_in_format(inv, "int8", keep_kinds=("weights",))


def test_tensor_bytes_sums_to_total():
    inv = dense_inventory(layers=4)
    for fmt in FORMATS:
        s = size_in_format(inv, fmt)
        assert sum(tensor_bytes(t, fmt, inv.arch) for t in inv.tensors) == s.bytes, fmt


def test_unknown_format_lists_valid_ones():
    with pytest.raises(SizewiseError) as e:
        size_in_format(dense_inventory(layers=1), "int3")
    assert "int4-g128" in str(e.value) and "q4_k_m" in str(e.value) and "\n" not in str(e.value)


def test_use_more_bits_32_layers():
    # by hand for n=32: first 4, last 4, and i in 4..27 with (i-4) % 3 == 2 -> 6, 9, ..., 27
    expected = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(32) if use_more_bits(i, 32)] == expected


def test_q4_k_m_layer_mix_by_hand():
    layers, h, inter, vocab = 32, 4096, 14336, 1024
    inv = dense_inventory(layers=layers, hidden=h, heads=32, kv_heads=8, vocab=vocab, inter=inter)
    q4k, q6k = ggml("Q4_K"), ggml("Q6_K")

    def b(rows, cols, t):
        return rows * cols // t[0] * t[1]
    more = 16  # layers with use_more_bits (test above)
    kv = 8 * 128
    expected = (
        b(vocab, h, q4k)  # untied token_embd stays at the default type
        + b(vocab, h, q6k)  # output.weight -> Q6_K
        + layers * (b(h, h, q4k) * 2 + b(kv, h, q4k))  # q, o, k
        + more * b(kv, h, q6k) + (layers - more) * b(kv, h, q4k)  # v
        + layers * 2 * b(inter, h, q4k)  # gate, up
        + more * b(h, inter, q6k) + (layers - more) * b(h, inter, q4k)  # down
        + 4 * (h + layers * 2 * h)  # norms in F32
    )
    assert size_in_format(inv, "q4_k_m").bytes == expected


def test_gguf_fallback_for_odd_rows_and_tied_output():
    # hidden 576 (SmolLM2): not a multiple of 256 -> Q4_K falls back to Q5_0; tied token_embd
    # takes the output type, Q6_K -> Q8_0 fallback
    inv = dense_inventory(layers=2, hidden=576, heads=9, kv_heads=3, vocab=1000, inter=1536, tie=True)
    s = size_in_format(inv, "q4_k_m")
    # 2 layers: use_more_bits is true for layer 1 only (7*2//8 = 1). Layer 1's v_proj (192 x 576) wants
    # Q6_K and falls back to Q8_0 as well.
    assert s.params_by_type["Q8_0"] == 1000 * 576 + 192 * 576
    assert "Q5_0" in s.bytes_by_type
    # down_proj rows are 1536 long = 6*256: stays K-quant; with 2 layers both get Q6_K (n/8 = 0, 7n/8 = 1 -> layer 1;
    # layer 0: (0-0)%3 != 2 -> Q4_K)
    assert s.params_by_type["Q6_K"] == 576 * 1536
    assert s.params_by_type["Q4_K"] == 576 * 1536


def test_q8_0_quantizes_embeddings_norms_stay_f32():
    inv = dense_inventory(layers=1, hidden=256, heads=4, kv_heads=2, vocab=1000, inter=512)
    s = size_in_format(inv, "q8_0")
    assert s.kept == ["norm"]
    assert s.bytes_by_type["F32"] == 4 * 256 * 3
    assert s.params_by_type["Q8_0"] == inv.total - 256 * 3


def test_high_precision_fp32_model():
    # an fp32 model quantized to int8: kept tensors stay 4 B, per-row scales stay 2 B (bf16)
    inv = dense_inventory(layers=1, hidden=256, heads=4, kv_heads=2, vocab=1000, inter=512)
    s = size_in_format(inv, "int8", high_precision="fp32")
    kept = sum(t.total for t in inv.tensors if t.kind != "linear")
    lin = [t for t in inv.tensors if t.kind == "linear"]
    assert s.bytes == 4 * kept + sum(t.total + 2 * t.shape[0] * t.copies for t in lin)
    g = size_in_format(one_matrix(64, 256), "int4-g128", high_precision="fp32")
    assert g.bytes == 64 * 256 // 2 + 64 * 2 * (2 + 2)
    assert size_in_format(inv, "q8_0", high_precision="fp32").bytes == size_in_format(inv, "q8_0").bytes
    with pytest.raises(SizewiseError):
        size_in_format(inv, "int8", high_precision="fp64")


def test_q4_k_m_70b_and_8_expert_bumps():
    from dataclasses import replace
    # 80 layers with GQA is llama.cpp's "70B" type: attn_v outside use_more_bits goes Q4_K -> Q5_K
    inv = dense_inventory(layers=80, hidden=256, heads=4, kv_heads=2, vocab=512, inter=512)
    v = next(t for t in inv.tensors if ".v_proj." in t.name)
    s = size_in_format(inv, "q4_k_m")
    more = sum(1 for i in range(80) if use_more_bits(i, 80))
    assert s.params_by_type["Q5_K"] == (80 - more) * v.numel
    # 8 routed experts (Mixtral): attn_v and attn_k at Q8_0 even in Q4_0 files
    moe = dense_inventory(layers=2, hidden=256, heads=4, kv_heads=2, vocab=512, inter=512)
    moe.arch = replace(moe.arch, num_experts=8, experts_per_token=2, num_moe_layers=2)
    kv = sum(t.total for t in moe.tensors if ".v_proj." in t.name or ".k_proj." in t.name)
    assert size_in_format(moe, "q4_0").params_by_type["Q8_0"] == kv
