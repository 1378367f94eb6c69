"""Integration: int8-wo on the bundled SmolLM2-135M (the session-shared fp32 load, deep-copied)."""
from __future__ import annotations

import copy

import torch

from sizewise.compression import packed as P
from sizewise.compression.apply import compress
from sizewise.compression.checkpoint import load_compressed, save_compressed
from sizewise.compression.recipes import RECIPES
from sizewise.compression.sizing import estimate_bytes


def test_bundled_int8_wo_save_load(bundled_model, tmp_path):
    from sizewise.evaluate.data import eval_tokens

    base, tok = bundled_model.model, bundled_model.tokenizer
    ids = torch.tensor([eval_tokens(tok, 64)])
    with torch.no_grad():
        ref = base(ids).logits
    m = compress(copy.deepcopy(base), RECIPES["int8-wo"])
    mods = [mod for mod in m.modules() if isinstance(mod, P.PackedLinear)]
    assert len(mods) == 30 * 7 and all(type(x) is P.Int8WeightOnlyLinear for x in mods)
    assert {x.kernel for x in mods} == {"aten._weight_int8pack_mm(bf16)"}
    with torch.no_grad():
        out = m(ids).logits
    top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert top1 > 0.9, top1  # int8 per-channel weights barely move the argmax

    man = save_compressed(m, tok, tmp_path / "out", None, bundled_model.source)
    m2, tok2, _ = load_compressed(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, out)
    assert tok2(" def f(x):", add_special_tokens=False)["input_ids"] == tok(" def f(x):", add_special_tokens=False)["input_ids"]
    est = estimate_bytes(man)
    assert abs(man["bytes_on_disk"] / est["estimate"] - 1) < 0.01
    assert man["parent"]["sha256_of"] == "file" and len(man["parent"]["sha256"]) == 64
