"""The fp32 stream around bf16 kernels: refined logits, wrappers that survive save/load, the same bytes on disk."""
from __future__ import annotations

import copy

import pytest
import torch

from comp_helpers import tiny_llama, tokens
from sizewise.compression.apply import compress
from sizewise.compression.checkpoint import load_compressed, save_compressed
from sizewise.compression.precision import RefinedLMHead, StreamEmbedding, stored_dtype
from sizewise.compression.recipes import RECIPES, recipe_from_dict
from sizewise.errors import SizewiseError


@pytest.mark.parametrize("own_kernel", [True, False])
def test_refined_head_top_k_are_exact_fp32_and_fix_near_ties(monkeypatch, own_kernel):
    from sizewise import kernels

    if not own_kernel:
        monkeypatch.setenv("SIZEWISE_KERNELS", "0")
    elif kernels.ops() is None:
        pytest.skip(f"sizewise's CPU kernels are not built here: {kernels.why_not()}")
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(500, 64).to(torch.bfloat16), requires_grad=False)
    x = torch.randn(6, 64) * 3
    # make rows 0 and 1 near-tied for every input: equal but for one tiny weight difference
    w.data[1] = w.data[0]
    w.data[1, 0] += 0.0078125  # representable in bf16 near 1
    x[:, 0] = x[:, 0].abs() + 0.5  # row 1 wins in exact arithmetic
    head = RefinedLMHead(w, k=8)
    y = head(x)
    exact = x @ w.float().T  # fp32 products of the same stored weights
    bf16 = torch.nn.functional.linear(x.bfloat16(), w).float()
    top = exact.topk(8, dim=-1).indices
    assert torch.allclose(y.gather(-1, top), exact.gather(-1, top), rtol=1e-5, atol=1e-5)
    rest = torch.ones_like(y, dtype=torch.bool).scatter(-1, top, False)
    if own_kernel:  # sizewise's kernel: bf16 products summed in fp32, not rounded to bf16 afterwards
        assert torch.allclose(y[rest], bf16[rest], rtol=2 ** -7, atol=0.05) and not torch.equal(y[rest], bf16[rest])
    else:
        assert torch.equal(y[rest], bf16[rest])  # outside the top k: the bf16 logits
    assert torch.equal(y.argmax(-1), exact.argmax(-1))
    assert head.weight is w and y.dtype == torch.float32


@pytest.mark.parametrize("name", ["int8-wo", "int8-gptq"])
def test_fp32_stream_survives_save_and_load_at_bf16_size(tmp_path, name):
    base = tiny_llama(seed=0, hidden=256, inter=512)
    calib = tokens(4, 48, seed=7)
    m = compress(copy.deepcopy(base), RECIPES[name], calib_tokens=calib)
    emb, head = m.model.embed_tokens, m.lm_head
    assert type(emb) is StreamEmbedding and type(head) is RefinedLMHead and head.weight is emb.weight
    assert emb.weight.dtype == torch.bfloat16 and m.model.norm.weight.dtype == torch.float32
    ids = tokens(2, 40)
    with torch.no_grad():
        want = m(ids).logits
        assert m.model.embed_tokens(ids).dtype == torch.float32  # the stream is fp32 from the first op
    save_compressed(m, None, tmp_path / "a", None, "tiny")
    got_m, _tok, man = load_compressed(tmp_path / "a")
    assert type(got_m.model.embed_tokens) is StreamEmbedding and type(got_m.lm_head) is RefinedLMHead
    assert got_m.lm_head.weight is got_m.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(got_m(ids).logits, want)
    # the same recipe on a bf16 stream writes the same number of bytes (embedding stored once, in bf16)
    b = compress(copy.deepcopy(base), recipe_from_dict({"base": name, "stream": "bf16"}), calib_tokens=calib)
    from sizewise.compression.precision import set_activation_dtype
    set_activation_dtype(b, torch.bfloat16)
    save_compressed(b, None, tmp_path / "b", None, "tiny")
    size = {d: sum(f.stat().st_size for f in (tmp_path / d).glob("*.safetensors")) for d in "ab"}
    norms = 2 * 2 * 256 + 256  # two norms per layer and the final one, 2 more bytes each in fp32
    assert size["a"] - size["b"] == pytest.approx(2 * norms, abs=512)
    assert man["recipe"]["stream"] == "fp32"


def test_fp32_stream_is_closer_to_the_parent_than_bf16():
    """Everything but the quantized Linears: with no Linear targeted, the fp32 stream differs from the parent
    only by the bf16-stored embedding/head, the bf16 stream by every op."""
    base = tiny_llama(seed=3, hidden=256, inter=512)
    ids = tokens(4, 64, seed=5)
    with torch.no_grad():
        ref = base(ids).logits.float()
        err = {}
        for stream in ("bf16", "fp32"):
            m = compress(copy.deepcopy(base), recipe_from_dict({"base": "int8-wo", "stream": stream, "include": "^$"}))
            if stream == "bf16":
                from sizewise.compression.precision import set_activation_dtype
                set_activation_dtype(m, torch.bfloat16)
            err[stream] = (m(ids).logits.float() - ref).abs().mean().item()
    assert err["fp32"] < 0.5 * err["bf16"]


def test_stream_validation_and_stored_dtypes():
    with pytest.raises(SizewiseError, match="stream must be 'bf16' or 'fp32'"):
        recipe_from_dict({"base": "int8-wo", "stream": "fp16"})
    assert stored_dtype("model.embed_tokens.weight", torch.float32, "fp32") == torch.bfloat16
    assert stored_dtype("lm_head.weight", torch.float32, "fp32") == torch.bfloat16
    assert stored_dtype("model.norm.weight", torch.bfloat16, "fp32") == torch.float32
    assert stored_dtype("model.norm.weight", torch.float32, "bf16") == torch.bfloat16  # bf16 stream: as in memory
    assert stored_dtype("x.weight_scale", torch.int8, "fp32") == torch.int8
