"""How much does the choice of each group's (scale, zero) matter for int4 round-to-nearest? Measured, same run.

RTN is fully determined by the grid: every weight goes to the nearest of the group's 16 levels. So the
only freedom a data-free int4-g64 recipe has is how it picks (scale, zero) per group, and this
benchmark bounds what that freedom can buy on the bundled parent (whose weights are GGUF Q4_1 g32):

- `minmax`: the classic grid spanning [min, max] (baseline).
- `fit, 1 start`: alternating least squares from min/max (sizewise's default before this benchmark).
- `fit, 3 starts`: the same from three zero shifts (sizewise's default now, `quant.FIT_STARTS`).
- `search, 165 starts`: 33 scales x 5 zero shifts x 4 rounds: a near-exhaustive data-free search.
- `act-mse`, 1 and 3 starts: the error weighted per input column by calibration mean x^2 (the
  int4-imatrix recipes).

Each grid is applied as fake quantization (fp32 weights set to the dequantized int4 values: exactly the
values the int4 kernel multiplies by) to every decoder Linear; KLD / top-1 / perplexity are against the
fp32 parent on the same evaluation tokens, weight error is sum((w - dequant)^2) / sum(w^2).

Run: .venv/bin/python benchmarks/bench_int4_grid.py [--group 64] [--tokens 4096]
     -> benchmarks/results/int4_grid.json
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streaming import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WIDE = tuple((float(f), off) for f in torch.linspace(0.6, 1.4, 33) for off in (-0.5, -0.25, 0.0, 0.25, 0.5))


def importance(model, linears, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean x^2 per input column of each Linear over the calibration tokens."""
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def hook(name):
        def f(mod, inp, out):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            count[name] = count.get(name, 0) + x.shape[0]
        return f
    hs = [m.register_forward_hook(hook(n)) for n, m in linears]
    with torch.inference_mode():
        for row in tokens:
            model(row[None])
    for h in hs:
        h.remove()
    return {n: sums[n] / count[n] for n, _ in linears}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096, help="evaluation tokens")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int4_grid.json"))
    a = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from sizewise.compression import quant as Q
    from sizewise.evaluate import data as D
    from sizewise.evaluate import metrics as M
    from sizewise.io.model_load import load_model

    g = a.group
    lm = load_model("bundled")
    model = lm.model.eval()
    linears = [(n, m) for n, m in model.named_modules() if type(m) is torch.nn.Linear and ".layers." in n]
    orig = {n: m.weight.detach().clone() for n, m in linears}
    toks = D.eval_tokens(lm.tokenizer, a.tokens)
    ref = M.build_reference(model, toks)
    calib = D.calib_tokens(lm.tokenizer, 16, 256)  # the recipes' default calibration text: disjoint from eval
    imp = importance(model, linears, calib)

    grids = [("minmax", dict(iters=0)),
             ("fit, 1 start", dict(iters=8, starts=Q.FIT_STARTS[:1])),
             ("fit, 3 starts (default)", dict()),
             ("search, 165 starts", dict(iters=4, starts=WIDE)),
             ("act-mse, 1 start", dict(iters=8, starts=Q.FIT_STARTS[:1], act=True)),
             ("act-mse, 3 starts", dict(act=True))]
    rows = []
    for name, kw in grids:
        act = kw.pop("act", False)
        t0 = time.perf_counter()
        err = norm = 0.0
        for n, m in linears:
            w = orig[n]
            s, z = Q.fit_int4_float(w, g, imp[n] if act else None, **kw)
            dq = Q.dequantize_int4_float(Q.quantize_int4_float_with(w, s, z, g), s, z, g)
            err += ((dq - w) ** 2).sum().item()
            norm += (w * w).sum().item()
            m.weight.data = dq
        fit_s = time.perf_counter() - t0
        q = M.compare(model, ref)
        rows.append({"grid": name, "fit_s": fit_s, "weight_rel_err": err / norm, "kld": q.kld, "top1": q.top1,
                     "ppl": q.ppl, "parent_ppl": ref.quality.ppl})
        print(f"{name}: KLD {q.kld:.4f}", flush=True)
    for n, m in linears:
        m.weight.data = orig[n]
    base = rows[0]
    t = Table(title=f"int4-g{g} grid choice on the bundled parent ({a.tokens} eval tokens, fake-quant fp32)")
    for c in ("grid", "fit s", "weight err", "vs minmax", "KLD", "KLD vs minmax", "top-1", "ppl"):
        t.add_column(c, justify="left" if c == "grid" else "right")
    for r in rows:
        r["err_vs_minmax"] = r["weight_rel_err"] / base["weight_rel_err"]
        r["kld_vs_minmax"] = r["kld"] / base["kld"]
        t.add_row(r["grid"], f"{r['fit_s']:.1f}", f"{r['weight_rel_err']:.3e}", f"{r['err_vs_minmax']:.3f}",
                  f"{r['kld']:.4f}", f"{r['kld_vs_minmax']:.3f}", f"{100 * r['top1']:.2f} %", f"{r['ppl']:.3f}")
    Console(width=130).print(t)
    out = {"benchmark": "int4_grid", "group_size": g, "eval_tokens": a.tokens, "calib": list(calib.shape),
           "parent_ppl": ref.quality.ppl, "rows": rows, "machine": machine(),
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    from sizewise.io.atomic import atomic_write_json
    atomic_write_json(a.out, out)  # a kill mid-write keeps the previous result whole
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
