"""Which CPU kernel and activation dtype should each packed scheme run? Measured, same process.

For SmolLM2-135M's Linear shapes (576->1536, 1536->576, 576->576) at M=1 (decode) and M=512
(prefill): fp32 F.linear (baseline), int8-wo (_weight_int8pack_mm) with bf16 vs fp32 activations,
int8-dyn (per-token quant + torch._int_mm), int4 (_weight_int4pack_mm_for_cpu) with bf16 vs fp32
activations, and "dequantize to fp32 then F.linear" (what a fake-quant module does: shown to prove it is no kernel).
Median of 40 (M=1) or 5 (M=512) after 3 warm-ups; ratios are against fp32 F.linear of the same shape and M.

Run: .venv/bin/python benchmarks/bench_kernels.py -> benchmarks/results/kernels.json
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streaming import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(576, 1536), (1536, 576), (576, 576)]  # (in, out)
MS = [1, 512]


def timeit(fn, reps=5, warm=2) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from sizewise.compression import packed as P
    from sizewise.compression import quant as Q

    torch.manual_seed(0)
    rows = []
    for k, n in SHAPES:
        lin = torch.nn.Linear(k, n, bias=False)
        w = lin.weight.detach()
        i8 = P.Int8WeightOnlyLinear.from_float(lin)
        i8d = P.Int8DynamicLinear.from_float(lin)
        i4 = P.Int4WeightOnlyLinear.from_float(lin, group_size=64)
        q, s, zp = Q.group_quantize_int4(w, 64)
        # _dyn_quant_pack_4bit_weight/_dyn_quant_matmul_4bit (int4 weights, dynamic int8 activations):
        # on x86 they are a reference fallback whose scales_zeros layout we could not match (outputs were
        # wrong in every layout tried), and KleidiAI (the fast path) is Arm-only: not used, not timed.
        for m in MS:
            x = torch.randn(m, k)
            base = timeit(lambda: F.linear(x, w), reps=40 if m == 1 else 5, warm=3)
            cases = {"fp32 F.linear": lambda: F.linear(x, w)}

            def run(mod, dt):
                mod.act_dtype = dt
                return lambda: mod(x)
            cases["int8-wo bf16 act"] = run(i8, torch.bfloat16)
            t8 = run(i8, torch.float32)
            cases["int8-wo fp32 act"] = t8
            cases["int8-dyn _int_mm"] = lambda: i8d(x)
            cases["int4-g64 bf16 act"] = run(i4, torch.bfloat16)
            cases["int4-g64 fp32 act"] = run(i4, torch.float32)
            cases["dequant->fp32 F.linear (not a kernel)"] = lambda: F.linear(x, Q.group_dequantize_int4(q, s, zp, 64))
            for name, fn in cases.items():
                reps = 40 if m == 1 else 5  # short ops: more samples, so the median survives scheduler noise
                sec = base if name == "fp32 F.linear" else timeit(fn, reps=reps, warm=3)
                rows.append({"shape": f"{k}->{n}", "M": m, "case": name, "seconds": sec, "vs_fp32": sec / base})
            i8.act_dtype = i4.act_dtype = torch.bfloat16
    result = {"benchmark": "CPU low-bit linear kernels", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "threads": torch.get_num_threads(),
              "load_avg_at_start": os.getloadavg()[0], "rows": rows}
    from sizewise.io.atomic import atomic_write_json
    out = ROOT / "benchmarks" / "results" / "kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    t = Table(title="linear kernels (median; ratio = time / fp32 F.linear; lower is faster)")
    for c in ("shape", "M", "case", "ms", "x fp32 time"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["shape"], str(r["M"]), r["case"], f"{1e3 * r['seconds']:.3f}", f"{r['vs_fp32']:.2f}")
    Console().print(t)


if __name__ == "__main__":
    main()
