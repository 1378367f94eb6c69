"""The int8 token table (`embed: int8`): lookups, the tied head stored once, reload, size, refusals."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from comp_helpers import char_tokenizer, tiny_llama, tokens
from sizewise.compression import packed as P
from sizewise.compression import quant as Q
from sizewise.compression.apply import compress
from sizewise.compression.checkpoint import disk_bytes, load_compressed, save_compressed
from sizewise.compression.precision import set_activation_dtype
from sizewise.compression.recipes import RECIPES, recipe_from_dict
from sizewise.compression.token_table import Int8Embedding, TiedInt8Head
from sizewise.errors import SizewiseError
from sizewise.study import expected_bytes


def test_lookup_is_the_dequantized_row():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 64)
    m = Int8Embedding.from_float(emb)
    ids = torch.tensor([[0, 7, 49], [3, 3, 12]])
    out = m(ids)
    ref = Q.dequantize_per_channel_int8(m.weight, m.weight_scale)[ids]
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 64)
    assert torch.allclose(out.float(), ref, rtol=2 ** -7, atol=0)  # one bf16 rounding of the product
    step = m.weight_scale.float()[ids][..., None]
    # half a quantization step, plus the bf16 rounding of the output
    assert ((out.float() - emb.weight[ids]).abs() <= 0.5 * step + ref.abs() * 2 ** -8 + 1e-6).all()


@pytest.mark.parametrize("tied", [True, False])
def test_compress_save_reload(tmp_path, tied):
    base = tiny_llama(seed=4, tied=tied)
    m = compress(copy.deepcopy(base), RECIPES["int4-g64-emb8"])
    plain = compress(copy.deepcopy(base), RECIPES["int4-g64"])
    assert type(m.model.embed_tokens) is Int8Embedding
    assert type(m.lm_head) is (TiedInt8Head if tied else P.Int8WeightOnlyLinear)
    if tied:  # the head reads the table itself, not a copy
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    n = sum(p.numel() for p in base.parameters())  # tied: counted once
    assert P.count_params(m) == P.count_params(plain) == P.count_params(base) == n
    assert m.model.embed_tokens.out_dtype == base.model.embed_tokens.weight.dtype  # the stream is unchanged
    ids = tokens(2, 40)
    with torch.no_grad():
        ref, before, without = base(ids).logits, m(ids).logits, plain(ids).logits
    rel = lambda y: float((y - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert rel(before) < 1.2 * rel(without)  # int8 rows add little on top of int4 layers
    man = save_compressed(m, char_tokenizer(), tmp_path / "out", None, None)
    m2, _, man2 = load_compressed(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, before)
    assert man2["modules"]["model.embed_tokens"]["scheme"] == "int8-embed"
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    if tied:
        assert "lm_head.weight" not in keys and man["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
        assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr()
    else:
        assert {"lm_head.weight", "lm_head.weight_scale"} <= keys


@pytest.mark.parametrize("tied", [True, False])
def test_estimate_prices_the_int8_table(tmp_path, tied):
    """What the table saves on disk is what `estimate`'s formats say it saves (a bf16 model, the policy
    the formats assume; a tiny model's totals are dominated by headers, so compare the difference)."""
    base = tiny_llama(seed=4, tied=tied).to(torch.bfloat16)
    out = {}
    for name in ("int4-g64", "int4-g64-emb8"):
        m = compress(copy.deepcopy(base), RECIPES[name])
        save_compressed(m, None, tmp_path / name, None, None)
        out[name] = (disk_bytes(tmp_path / name), expected_bytes(m, name, RECIPES[name], m.sizewise_compression.fallbacks))
    saved_disk = out["int4-g64"][0] - out["int4-g64-emb8"][0]
    saved_est = out["int4-g64"][1] - out["int4-g64-emb8"][1]
    assert saved_disk > 0 and abs(saved_disk - saved_est) <= 0.01 * saved_disk + 256


def test_bad_combinations_are_user_errors(tiny_hf_dir, tmp_path):
    for stream in ("fp32", "bf16"):  # the table hands rows on in the stream's dtype, the head returns it
        m = compress(tiny_llama(seed=2), recipe_from_dict({"base": "int4-g64", "embed": "int8", "stream": stream}))
        assert isinstance(m.model.embed_tokens, Int8Embedding) and isinstance(m.lm_head, TiedInt8Head)
        dt = torch.float32 if stream == "fp32" else torch.bfloat16
        if stream == "bf16":  # compress leaves a bf16 stream's float parts as they were; the study casts them
            set_activation_dtype(m, dt)
        assert m.model.embed_tokens.out_dtype == dt and m(tokens(1, 8)).logits.dtype == dt
    with pytest.raises(SizewiseError, match="embed must be"):
        recipe_from_dict({"base": "int4-g64", "embed": "int4"})
    json.dumps(RECIPES["int4-g64-emb8"].to_dict())  # the manifest can record it
