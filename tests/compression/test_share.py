"""Parameter sharing: exact per-element fit, W_i == W_base * M_i after reload, and the bytes."""
from __future__ import annotations

import itertools

import pytest
import torch

from sizewise.compression.share import (SharedLinear, apply_sharing, fit_shared, share_bytes, share_groups,
                                        shared_params)
from sizewise.errors import SizewiseError


def _tiny(layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("k", [2, 3])
def test_fit_shared_is_the_per_element_optimum(k):
    g = torch.Generator().manual_seed(k)
    ws = [torch.randn(6, 5, generator=g) for _ in range(k)]
    base, masks = fit_shared(ws)
    W = torch.stack(ws)
    err = sum(((w - base * m) ** 2) for w, m in zip(ws, masks))
    # brute force every mask pattern with its optimal base for a few elements
    for idx in [(0, 0), (2, 3), (5, 4)]:
        vals = W[(slice(None), *idx)]
        best = min(
            float(((vals[list(s)] - vals[list(s)].mean()) ** 2).sum()
                  + (vals[[i for i in range(k) if i not in s]] ** 2).sum())
            for r in range(1, k + 1) for s in itertools.combinations(range(k), r))
        assert float(err[idx]) == pytest.approx(best, rel=1e-5, abs=1e-7)
    # never worse than sharing the plain mean with all-ones masks
    assert float(err.sum()) <= float(((W - W.mean(0)) ** 2).sum()) + 1e-6


def test_share_groups_pairs_adjacent_layers():
    model = _tiny(layers=5)
    groups = share_groups(model, 2, ("mlp.up_proj",))
    assert groups == [["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"],
                      ["model.layers.2.mlp.up_proj", "model.layers.3.mlp.up_proj"]]
    with pytest.raises(SizewiseError):
        share_groups(model, 1)


def test_share_save_load_exact_and_bytes(tmp_path):
    from sizewise.compression.checkpoint import load_compressed, save_compressed

    model = _tiny()
    groups = share_groups(model, 2)
    apply_sharing(model, groups)
    mods = dict(model.named_modules())
    # one Parameter per group, shared by both members
    assert len(shared_params(model)) == len(groups) == 6
    a, b = mods[groups[0][0]], mods[groups[0][1]]
    assert a.base is b.base and not torch.equal(a.mask, b.mask)
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).logits
    save_compressed(model, None, tmp_path / "s", {"share": True}, None)
    loaded, _, manifest = load_compressed(tmp_path / "s")
    lmods = dict(loaded.named_modules())
    for g in groups:
        base = lmods[g[0]].base
        for n in g:
            m = lmods[n]
            assert isinstance(m, SharedLinear) and m.base is base
            assert torch.equal(m.dequantized_weight(), base * m.mask)
            assert torch.equal(m.mask, mods[n].mask)
            assert torch.equal(m.dequantized_weight(), mods[n].dequantized_weight())
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref)
    # bytes: per group of 2, one fp16 base + 2 one-bit masks
    nb = share_bytes(model)
    per = sum(mods[g[0]].in_features * mods[g[0]].out_features for g in groups)
    assert nb["shared_packed_bytes"] == per * 2 + 2 * per // 8
    assert nb["shared_dense_fp16_bytes"] == 2 * per * 2
    assert nb["ratio"] == pytest.approx(18 / 32)
    # the base is stored once per group in the file
    stored = [k for k in manifest["modules"] if manifest["modules"][k]["meta"]["owner"]]
    assert len(stored) == len(groups)


def test_base_fine_tuning_lowers_loss_and_keeps_structure():
    from sizewise.compression.recovery import RecoveryConfig, recover
    model = _tiny()
    apply_sharing(model, share_groups(model, 2))
    params = shared_params(model)
    train = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(3))
    losses = recover(model, {}, train, RecoveryConfig(steps=8, lr=1e-2, batch=2, train="params"), params=params)
    assert losses[-1] < losses[0]
    for m in model.modules():
        if isinstance(m, SharedLinear):
            assert torch.equal(m.dequantized_weight(), (m.base * m.mask).detach())
