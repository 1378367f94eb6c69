"""Paired comparison of models scored on the same tokens, with block-bootstrap intervals.

Why paired: two models' perplexities over the same 8k tokens each carry a sampling error far
larger than the 1-2 % differences compression recipes are judged by, but most of that error
is which tokens happen to be hard, and it is shared. The per-token difference
d_t = NLL_B(t) - NLL_A(t) cancels it, so the mean of d_t is measured much more precisely
than either perplexity.

Why blocks: neighbouring tokens are not independent (a hard phrase is hard for several
tokens), so resampling single tokens would understate the error and call noise a difference.
The bootstrap here resamples non-overlapping blocks of consecutive tokens (default 32), which
keeps the correlation inside a block; `tests/registry/test_compare.py` checks that at the stated
95 % the false-positive rate on correlated, truly-equal data is about 5 %, and that resampling
single tokens on the same data is far above it.

Pure numpy: consumes per-token arrays (what `commands/compare.py` measures) or result JSON.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from sizewise.errors import SizewiseError

BLOCK = 32
N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Interval:
    """Mean of a per-token series with a block-bootstrap percentile interval."""

    mean: float
    lo: float
    hi: float
    n: int
    block: int
    n_blocks: int

    def contains(self, v: float) -> bool:
        return self.lo <= v <= self.hi

    def to_dict(self) -> dict:
        return asdict(self)


def block_bootstrap(x, block: int = BLOCK, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile interval of mean(x) resampling non-overlapping blocks of `block` consecutive
    values with replacement (the last block may be short; means are weighted by length)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise SizewiseError("no tokens to compare: give at least one window of two tokens")
    if block < 1:
        raise SizewiseError(f"block size must be at least 1, got {block}")
    nb = math.ceil(n / block)
    pad = nb * block - n
    xs = np.concatenate([x, np.zeros(pad)]).reshape(nb, block)
    counts = np.full(nb, block, dtype=np.float64)
    counts[-1] -= pad
    sums = xs.sum(axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, nb, size=(n_boot, nb))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return Interval(mean=float(x.mean()), lo=float(lo), hi=float(hi), n=n, block=block, n_blocks=nb)


@dataclass
class PairedNLL:
    """B minus A, nats per predicted token; ppl ratio exp(mean) - 1 as a percentage."""

    a: str
    b: str
    diff: Interval
    level: float = LEVEL

    @property
    def distinguishable(self) -> bool:
        return not self.diff.contains(0.0)

    def ppl_change_pct(self) -> tuple[float, float, float]:
        f = lambda v: 100.0 * math.expm1(v)  # noqa: E731
        return f(self.diff.mean), f(self.diff.lo), f(self.diff.hi)

    def verdict(self) -> str:
        m, lo, hi = self.ppl_change_pct()
        pct = int(round(100 * self.level))
        head = (f"{self.b} vs {self.a}: perplexity {m:+.2f} % (95 % CI {lo:+.2f} to {hi:+.2f} %, "
                f"block bootstrap, {self.diff.n_blocks} blocks of {self.diff.block} tokens)")
        if self.distinguishable:
            return f"{head}: {'worse' if m > 0 else 'better'}, distinguishable from zero at {pct} %"
        return f"{head}: not distinguishable from zero at {pct} %"

    def to_dict(self) -> dict:
        m, lo, hi = self.ppl_change_pct()
        return {"a": self.a, "b": self.b, "nll_diff": self.diff.to_dict(), "ppl_change_pct": m,
                "ppl_change_pct_lo": lo, "ppl_change_pct_hi": hi, "distinguishable": self.distinguishable,
                "level": self.level, "verdict": self.verdict()}


def paired_nll(a: str, b: str, nll_a, nll_b, block: int = BLOCK, n_boot: int = N_BOOT, seed: int = 0) -> PairedNLL:
    """Compare per-token NLLs of two models on the same tokens (same order, same length)."""
    na, nb = np.asarray(nll_a, dtype=np.float64), np.asarray(nll_b, dtype=np.float64)
    if na.shape != nb.shape:
        raise SizewiseError(f"{a} and {b} were scored on different tokens ({na.size} vs {nb.size}): "
                            "a paired comparison needs the same tokens")
    return PairedNLL(a, b, block_bootstrap(nb - na, block, n_boot, seed=seed))


def summarize_model(name: str, nll, kld=None, agree=None, block: int = BLOCK, seed: int = 0) -> dict:
    """One model's scores with intervals: ppl from mean NLL, KLD and top-1 vs the common parent."""
    iv = block_bootstrap(nll, block, seed=seed)
    out = {"name": name, "n_predicted": iv.n, "nll": iv.mean, "ppl": math.exp(iv.mean),
           "ppl_lo": math.exp(iv.lo), "ppl_hi": math.exp(iv.hi)}
    if kld is not None:
        k = block_bootstrap(kld, block, seed=seed)
        out.update(kld=k.mean, kld_lo=k.lo, kld_hi=k.hi, kld_max=float(np.max(kld)))
    if agree is not None:
        t = block_bootstrap(np.asarray(agree, dtype=np.float64), block, seed=seed)
        out.update(top1=t.mean, top1_lo=t.lo, top1_hi=t.hi)
    return out


def quality_comparison(names: list[str], nll: dict, kld: dict | None = None, agree: dict | None = None,
                       reference: str | None = None, block: int = BLOCK, seed: int = 0) -> dict:
    """Every model against the reference (first name unless given): per-model summaries and
    paired NLL differences, JSON-ready."""
    ref = reference or names[0]
    models = [summarize_model(n, nll[n], (kld or {}).get(n), (agree or {}).get(n), block, seed) for n in names]
    pairs = [paired_nll(ref, n, nll[ref], nll[n], block, seed=seed).to_dict() for n in names if n != ref]
    return {"reference": ref, "block": block, "n_boot": N_BOOT, "level": LEVEL, "models": models, "pairs": pairs}
