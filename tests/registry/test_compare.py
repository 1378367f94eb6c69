"""Paired NLL comparison on synthetic per-token data with a known difference.

The data imitate a real run: per-token NLLs around 2.7 nats (ppl ~15), heavy-tailed, and
serially correlated (AR(1), phi 0.6) so that single-token resampling would be wrong."""
from __future__ import annotations

import numpy as np
import pytest

from sizewise.errors import SizewiseError
from sizewise.registry.compare import block_bootstrap, paired_nll, quality_comparison

N = 4096


def ar1(rng, trials: int, n: int, phi: float = 0.6, sd: float = 0.3) -> np.ndarray:
    """[trials, n] zero-mean AR(1) series (vectorized over trials)."""
    e = rng.normal(0.0, sd, (trials, n))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / np.sqrt(1 - phi ** 2)
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + e[:, i]
    return x


def base_nll(rng, trials: int, n: int) -> np.ndarray:
    """Per-token NLL of a reference model: gamma-distributed (mean 2.7), with correlated difficulty."""
    return rng.gamma(2.0, 1.35, (trials, n)) + np.abs(ar1(rng, trials, n, 0.8, 0.5))


def test_finds_a_real_two_percent_nll_difference():
    rng = np.random.default_rng(1)
    trials = 40
    a = base_nll(rng, trials, N)
    b = a * 1.02 + ar1(rng, trials, N)  # 2 % more NLL per token, plus correlated model noise
    found = [paired_nll("A", "B", a[i], b[i], seed=i) for i in range(trials)]
    assert sum(p.distinguishable for p in found) >= trials - 2
    p = found[0]
    true = float((b[0] - a[0]).mean())
    assert p.diff.lo < true < p.diff.hi and p.diff.mean == pytest.approx(true)
    assert p.ppl_change_pct()[0] > 0 and "worse, distinguishable from zero at 95 %" in p.verdict()


def test_false_positive_rate_on_equal_models_is_about_five_percent():
    """Two models that differ only by zero-mean correlated noise: at 95 % about 5 % of trials may
    call a difference (block bootstrap); resampling single tokens on the same data calls far more."""
    rng = np.random.default_rng(2)
    trials = 400
    a = base_nll(rng, trials, N)
    b = a + ar1(rng, trials, N)
    fpr = np.mean([paired_nll("A", "B", a[i], b[i], n_boot=1000, seed=i).distinguishable for i in range(trials)])
    assert 0.02 <= fpr <= 0.10, fpr
    iid = np.mean([not block_bootstrap(b[i] - a[i], block=1, n_boot=400, seed=i).contains(0.0) for i in range(60)])
    assert iid > 0.15, iid  # why blocks: token-level resampling ignores the correlation


def test_two_identical_runs_are_not_a_difference():
    rng = np.random.default_rng(3)
    a = base_nll(rng, 1, N)[0]
    p = paired_nll("A", "A again", a, a.copy())
    assert not p.distinguishable and p.diff.mean == 0.0
    assert "not distinguishable from zero at 95 %" in p.verdict()


def test_block_bootstrap_blocks_and_short_last_block():
    iv = block_bootstrap(np.arange(100.0), block=32)
    assert iv.n_blocks == 4 and iv.n == 100 and iv.mean == pytest.approx(49.5)
    assert iv.lo < 49.5 < iv.hi
    const = block_bootstrap(np.full(70, 2.0), block=8)
    assert const.lo == pytest.approx(2.0) and const.hi == pytest.approx(2.0)


def test_quality_comparison_summaries_and_bad_input():
    rng = np.random.default_rng(4)
    a = base_nll(rng, 1, 1024)[0]
    b = a * 1.05
    q = quality_comparison(["A", "B"], {"A": a, "B": b}, kld={"A": np.zeros(1024), "B": np.full(1024, 0.01)},
                           agree={"A": np.ones(1024, bool), "B": np.arange(1024) % 10 != 0})
    assert q["reference"] == "A" and len(q["pairs"]) == 1
    m = {x["name"]: x for x in q["models"]}
    assert m["B"]["kld"] == pytest.approx(0.01) and m["B"]["top1"] == pytest.approx(0.899, abs=1e-3)
    assert m["A"]["ppl_lo"] < m["A"]["ppl"] < m["A"]["ppl_hi"]
    assert q["pairs"][0]["distinguishable"] and q["pairs"][0]["ppl_change_pct"] > 0
    with pytest.raises(SizewiseError, match="different tokens"):
        paired_nll("A", "B", a, a[:-1])
    with pytest.raises(SizewiseError, match="no tokens"):
        block_bootstrap([])
