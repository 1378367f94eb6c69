"""Masks, criteria, SparseGPT, recovery and the progressive schedule on tiny random models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sizewise.compression.prune import (Pattern, magnitude_scores, mask_from_scores, mask_sparsity, nm_mask,
                                        parse_pattern, prunable_linears, prune_model, unstructured_mask,
                                        wanda_scores)
from sizewise.errors import SizewiseError


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def calib(n=4, seq=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (n, seq), generator=g)


# ---------------------------------------------------------------- patterns

@pytest.mark.parametrize("bad", ["1", "1.5", "-0.1", "4:4", "3:2", "0:4", "a:b", "half"])
def test_bad_sparsity_is_a_user_error(bad):
    with pytest.raises(SizewiseError):
        parse_pattern(bad)


def test_parse_pattern():
    assert parse_pattern("2:4") == Pattern(0.5, 2, 4)
    assert parse_pattern("0.7").sparsity == pytest.approx(0.7) and not parse_pattern("0.7").is_nm
    assert parse_pattern("4:8").n == 4


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("per", ["row", "layer"])
def test_unstructured_exact_sparsity(s, per):
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    m = unstructured_mask(w.abs(), s, per)
    if per == "row":
        assert (m.sum(1) == 40 - round(s * 40)).all()
    else:
        assert int(m.sum()) == w.numel() - round(s * w.numel())
    # the pruned weights are the smallest ones of their comparison group
    if 0 < s:
        rows = w.abs() if per == "row" else w.abs().reshape(1, -1)
        mm = m if per == "row" else m.reshape(1, -1)
        kept_min = rows.masked_fill(~mm, float("inf")).min(1).values
        pruned_max = rows.masked_fill(mm, -1).max(1).values
        assert (pruned_max <= kept_min).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_structure(n, m):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    mask = nm_mask(w.abs(), n, m)
    groups = mask.reshape(16, 32 // m, m)
    assert (groups.sum(-1) == n).all()
    # within each group the kept ones are the largest
    a = w.abs().reshape(16, 32 // m, m)
    kept_min = a.masked_fill(~groups, float("inf")).min(-1).values
    pruned_max = a.masked_fill(groups, -1).max(-1).values
    assert (pruned_max <= kept_min).all()


def test_nm_must_divide_input_dim():
    with pytest.raises(SizewiseError, match="divide"):
        nm_mask(torch.randn(4, 10), 2, 4)


def test_wanda_differs_from_magnitude_with_nonuniform_activations():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    norms = torch.ones(64)
    norms[:8] = 50.0  # a few input channels carry large activations (LLM outlier features)
    p = Pattern(0.5)
    m_mag = mask_from_scores(magnitude_scores(w), p, "row")
    m_wanda = mask_from_scores(wanda_scores(w, norms), p, "row")
    assert not torch.equal(m_mag, m_wanda)
    # Wanda keeps (almost) every weight that meets a large activation
    assert m_wanda[:, :8].float().mean() > 0.95 > m_mag[:, :8].float().mean()
    # with uniform norms it is magnitude pruning
    assert torch.equal(mask_from_scores(wanda_scores(w, torch.ones(64)), p, "row"), m_mag)


def test_previous_mask_stays_pruned():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    first = mask_from_scores(w.abs(), Pattern(0.3), "row")
    w2 = torch.randn(8, 32) * 10  # new scores would revive some
    second = mask_from_scores(w2.abs(), Pattern(0.6), "row", keep_within=first)
    assert not (second & ~first).any()
    assert (second.sum(1) == 32 - round(0.6 * 32)).all()


# ---------------------------------------------------------------- whole-model pruning

def test_default_targets_skip_embeddings_norms_and_head():
    model = tiny_llama()
    names = prunable_linears(model)
    assert len(names) == 2 * 7
    assert not any("lm_head" in n or "embed" in n or "norm" in n for n in names)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("spec", ["0.5", "2:4"])
def test_prune_model_exact_structure(method, spec):
    model = tiny_llama()
    head = model.lm_head.weight.detach().clone()
    pat = parse_pattern(spec)
    masks = prune_model(model, method, pat, calib())
    mods = dict(model.named_modules())
    assert mask_sparsity(masks) == pytest.approx(0.5, abs=1e-9)
    for name, mask in masks.items():
        w = mods[name].weight
        assert (w[~mask] == 0).all()
        if pat.is_nm:
            assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    assert torch.equal(model.lm_head.weight, head)


def test_data_methods_need_calibration():
    with pytest.raises(SizewiseError, match="calibration"):
        prune_model(tiny_llama(), "wanda", Pattern(0.5), torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(SizewiseError, match="calibration"):
        prune_model(tiny_llama(), "sparsegpt", Pattern(0.5), None)


def test_data_aware_pruning_beats_magnitude_on_output_error():
    """On the tiny model, Wanda/SparseGPT keep the logits closer to dense than magnitude at 50 %."""
    x = calib(4, 64, seed=3)
    dense = tiny_llama()
    with torch.no_grad():
        ref = dense(x).logits
    errs = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        m = tiny_llama()
        prune_model(m, method, Pattern(0.5), calib(8, 64, seed=5))
        with torch.no_grad():
            errs[method] = float((m(x).logits - ref).pow(2).mean())
    assert errs["sparsegpt"] < errs["magnitude"]


# ---------------------------------------------------------------- SparseGPT on one layer

def _correlated_inputs(n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    mix = torch.randn(8, d, generator=g)
    return z @ mix + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("spec", ["0.5", "2:4", "0.8"])
def test_sparsegpt_reconstruction_beats_magnitude(spec):
    from sizewise.compression.sparsegpt import sparsegpt_prune
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = _correlated_inputs()
    pat = parse_pattern(spec)
    h = 2 * x.T @ x / x.shape[0]
    w_sg, keep, _ = sparsegpt_prune(w, h, pat, blocksize=32)
    mag = w * mask_from_scores(w.abs(), pat, "row")
    err_sg = float((x @ (w - w_sg).T).pow(2).mean())
    err_mag = float((x @ (w - mag).T).pow(2).mean())
    assert err_sg < err_mag
    assert (w_sg[~keep] == 0).all()
    assert 1 - keep.float().mean().item() == pytest.approx(pat.sparsity, abs=1 / (32 * 32))  # rounded per block
    if pat.is_nm:
        assert (keep.reshape(32, -1, 4).sum(-1) == 2).all()


def test_sparsegpt_joint_int4_lands_on_the_stored_grid():
    from sizewise.compression.sparse import SparseLinear
    from sizewise.compression.sparsegpt import sparsegpt_prune
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = _correlated_inputs()
    h = 2 * x.T @ x / x.shape[0]
    wq, keep, qp = sparsegpt_prune(w, h, Pattern(0.5, 2, 4), quant_bits=4, quant_group=32)
    lin = nn.Linear(64, 32, bias=False)
    lin.weight.data = wq
    packed = SparseLinear.from_float(lin, keep, "int4", 2, 4, quant=qp)
    assert torch.equal(packed.dequantized_weight(), wq)  # every kept weight is exactly a stored code
    # joint quantization reconstructs better than quantizing the pruned weights afterwards (RTN)
    w_sg, keep2, _ = sparsegpt_prune(w, h, Pattern(0.5, 2, 4))
    lin.weight.data = w_sg
    rtn = SparseLinear.from_float(lin, keep2, "int4", 2, 4, group_size=32).dequantized_weight()
    err_joint = float((x @ (w - wq).T).pow(2).mean())
    err_after = float((x @ (w - rtn).T).pow(2).mean())
    assert err_joint < err_after


# ---------------------------------------------------------------- recovery and schedule

def test_recovery_keeps_masks_fixed_and_learns():
    from sizewise.compression.recovery import RecoveryConfig, recover
    model = tiny_llama()
    masks = prune_model(model, "magnitude", Pattern(0.6))
    mods = dict(model.named_modules())
    before = {n: mods[n].weight.detach().clone() for n in masks}
    train = calib(4, 32, seed=7)
    losses = recover(model, masks, train, RecoveryConfig(steps=6, lr=1e-2, batch=2))
    assert len(losses) == 6
    changed = 0
    for n, m in masks.items():
        w = mods[n].weight
        assert (w[~m] == 0).all(), n
        changed += int((w[m] != before[n][m]).sum())
    assert changed > 0
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in model.parameters() if p.grad is not None)


def test_recovery_with_distillation_runs_and_keeps_masks():
    import copy

    from sizewise.compression.recovery import RecoveryConfig, recover
    model = tiny_llama()
    teacher = copy.deepcopy(model)
    masks = prune_model(model, "magnitude", Pattern(0.5))
    losses = recover(model, masks, calib(2, 32), RecoveryConfig(steps=3, lr=1e-2, kd_weight=0.5), teacher=teacher)
    assert all(l > 0 for l in losses)
    mods = dict(model.named_modules())
    assert all((mods[n].weight[~m] == 0).all() for n, m in masks.items())


def test_schedule_levels():
    from sizewise.compression.schedule import levels
    assert levels(0.5, 0.1) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert levels(0.7, 0.1, start=0.5) == pytest.approx([0.5, 0.6, 0.7])
    assert levels(0.25, 0.1) == pytest.approx([0.1, 0.2, 0.25])


def test_progressive_reaches_target_with_nested_masks():
    from sizewise.compression.recovery import RecoveryConfig
    from sizewise.compression.schedule import progressive_prune
    model = tiny_llama()
    seen = []
    res = progressive_prune(model, "wanda", Pattern(0.6), calib(), calib(4, 32, seed=9), step=0.2,
                            recovery=RecoveryConfig(steps=2, lr=1e-3), on_step=seen.append)
    assert [round(r.sparsity, 6) for r in res.log] == pytest.approx([0.2, 0.4, 0.6], abs=0.01)
    assert len(seen) == 3 and all(r.loss_end is not None for r in seen)
    assert mask_sparsity(res.masks) == pytest.approx(0.6, abs=0.01)
    with pytest.raises(SizewiseError, match="N:M"):
        progressive_prune(model, "wanda", Pattern(0.5, 2, 4), calib(), calib())
