"""Perplexity, KLD and top-1: the protocol's cross-check on the bundled model, and behaviour on a
tiny random model checked against an independent computation (HF's own loss)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from sizewise.evaluate import data, metrics


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from sizewise.io.model_load import load_model
    return load_model(str(tiny_model_dir))


@pytest.mark.slow
def test_bundled_fp32_perplexity_matches_the_protocol_cross_check(bundled_model):
    ids = data.eval_tokens(bundled_model.tokenizer, 8192)
    q = metrics.perplexity(bundled_model.model, ids, 512)
    assert q.n_predicted == 8176 and q.n_windows == 16
    assert q.ppl == pytest.approx(14.94, abs=0.01)  # DESIGN.md: transformers fp32 on the dequantized GGUF


def test_perplexity_equals_hf_loss_per_window(tiny):
    ids = data.eval_tokens(tiny.tokenizer, 1024)
    q = metrics.perplexity(tiny.model, ids, 512)
    nll = 0.0
    with torch.no_grad():
        for w in data.windows(ids, 512):
            x = torch.tensor([w])
            nll += tiny.model(input_ids=x, labels=x).loss.item() * (len(w) - 1)  # HF shifts labels itself
    assert q.n_predicted == 1022
    assert q.ppl == pytest.approx(math.exp(nll / 1022), rel=1e-5)


def test_model_against_itself_has_zero_kld_and_full_agreement(tiny):
    ids = data.eval_tokens(tiny.tokenizer, 1024)
    ref = metrics.build_reference(tiny.model, ids, 512)
    q = metrics.compare(tiny.model, ref)
    assert q.kld == pytest.approx(0.0, abs=1e-7)
    assert q.top1 == 1.0
    assert q.ppl == pytest.approx(ref.quality.ppl, rel=1e-9)


def test_reference_reproduces_parent_logits_exactly(tiny):
    ids = data.eval_tokens(tiny.tokenizer, 512)
    ref = metrics.build_reference(tiny.model, ids, 512)
    with torch.no_grad():
        direct = tiny.model(input_ids=torch.tensor([ids])).logits[0]
    assert torch.equal(ref.parent_logits(0), direct)


def _perturbed(model, scale: float, seed: int = 1):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layers" in n and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return m


def test_kld_and_top1_move_the_right_way_with_more_noise(tiny):
    ids = data.eval_tokens(tiny.tokenizer, 512)
    ref = metrics.build_reference(tiny.model, ids, 512)
    small = metrics.compare(_perturbed(tiny.model, 0.05), ref)
    large = metrics.compare(_perturbed(tiny.model, 1.0), ref)
    assert 0 < small.kld < large.kld
    assert large.top1 < small.top1 <= 1.0


def test_kld_top1_on_hand_made_distributions():
    p = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    q = torch.tensor([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    kld, agree = metrics.kld_top1(p, q)
    pp, qq = torch.softmax(p[1], -1), torch.softmax(q[1], -1)
    assert kld[0].item() == pytest.approx(0.0, abs=1e-7)
    assert kld[1].item() == pytest.approx((pp * (pp / qq).log()).sum().item(), rel=1e-5)
    assert agree.tolist() == [True, False]
