"""Sparsity benchmark: bytes on disk, dense vs sparse speed on this CPU, and the quality targets.

    .venv/bin/python benchmarks/bench_sparsity.py [--quick] [--skip-quality]

Writes benchmarks/results/sparsity.json (machine + command included) and prints rich tables.
Targets (issue 6): Wanda/SparseGPT 50 % ppl increase <= half of magnitude's; progressive 70 % ppl
< one-shot 70 % (same criterion); pruned tensors vs dense fp16: 2:4 fp16 <= 0.6x, 2:4 int4 <= 0.2x,
50 % unstructured fp16 <= 0.6x. Each is reported met / missed as measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sizewise.study_sparsity import StudyConfig, machine_info, run_study  # noqa: E402

console = Console()

BYTES_CASES = [  # (label, sparsity, recipe, target ratio or None)
    ("2:4 fp16", "2:4", None, 0.6),
    ("2:4 int4-g64", "2:4", "int4-g64", 0.2),
    ("2:4 int4-g128", "2:4", "int4-g128", 0.2),
    ("4:8 fp16", "4:8", None, None),
    ("50% unstructured fp16", "0.5", None, 0.6),
    ("50% unstructured int4-g64", "0.5", "int4-g64", None),
    ("70% unstructured fp16", "0.7", None, None),
    ("90% unstructured fp16", "0.9", None, None),
]


def bench_bytes(model_spec: str, quick: bool) -> list[dict]:
    from sizewise.commands.prune import apply_prune_options
    from sizewise.compression.checkpoint import load_compressed, save_compressed
    from sizewise.compression.sparse import SparseLinear, packed_nbytes
    from sizewise.io.model_load import load_model

    import copy

    lm = load_model(model_spec)
    unique = {p.data_ptr(): p.numel() for p in lm.model.parameters()}
    dense_ckpt_fp16 = 2 * sum(unique.values())
    rows = []
    cases = BYTES_CASES[:2] + BYTES_CASES[4:5] if quick else BYTES_CASES
    x = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
    for i, (label, spec, recipe, target) in enumerate(cases):
        model = copy.deepcopy(lm.model)  # a fresh dense copy per case (pruning swaps modules)
        apply_prune_options(model, lm.tokenizer, {"prune": "magnitude", "sparsity": spec, "recipe": recipe})
        sparse = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
        # everything not pruned is stored fp16 too, as a `--recipe fp16` checkpoint would be
        with torch.no_grad():
            for n, p in model.named_parameters():
                if not any(n.startswith(s + ".") for s in sparse):
                    p.data = p.data.half()
        packed = sum(packed_nbytes(m) for m in sparse.values())
        dense = sum(2 * m.in_features * m.out_features for m in sparse.values())
        with tempfile.TemporaryDirectory() as d:
            man = save_compressed(model, None, Path(d) / "ckpt", {"prune": model.sizewise_prune}, None)
            loaded, _, _ = load_compressed(Path(d) / "ckpt")
            with torch.no_grad():
                for m in (model, loaded):  # back to fp32 params (values are fp16-exact) to run on CPU
                    for p in m.parameters():
                        p.data = p.data.float()
                same = bool(torch.equal(model(x).logits, loaded(x).logits))
        ratio = packed / dense
        rows.append({"case": label, "sparsity": spec, "values": recipe or "fp16", "pruned_packed_bytes": packed,
                     "pruned_dense_fp16_bytes": dense, "ratio": ratio, "target": target,
                     "met": None if target is None else ratio <= target,
                     "checkpoint_bytes": man["bytes_on_disk"], "dense_fp16_checkpoint_bytes": dense_ckpt_fp16,
                     "checkpoint_ratio": man["bytes_on_disk"] / dense_ckpt_fp16, "reload_identical_logits": same})
        console.log(f"bytes {label}: {ratio:.4f}x of dense fp16 (checkpoint {rows[-1]['checkpoint_ratio']:.3f}x)")
    return rows


def _median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _paired(fn, base, reps: int) -> tuple[float, float]:
    """Median times of `fn` and `base`, run alternately so both see the same machine load."""
    fn(), base()
    a, b = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        base()
        b.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def bench_speed(quick: bool) -> list[dict]:
    """One SmolLM2 MLP projection (1536 x 576), decode (1 token) and prefill (512 tokens)."""
    from torch import nn

    from sizewise.compression.prune import mask_from_scores, parse_pattern
    from sizewise.compression.sparse import SparseLinear

    torch.manual_seed(0)
    lin = nn.Linear(576, 1536, bias=False)
    reps = 5 if quick else 21
    rows = []
    for tokens in (1, 512):
        x = torch.randn(tokens, 576)
        with torch.no_grad():
            base = _median_time(lambda: lin(x), reps)
            rows.append({"tokens": tokens, "variant": "dense fp32 F.linear", "seconds": base, "ratio_vs_dense": 1.0,
                         "kernel": "F.linear (MKL/oneDNN sgemm)"})
            for spec in ("2:4", "0.5", "0.7", "0.9"):
                pat = parse_pattern(spec)
                mask = mask_from_scores(lin.weight.abs(), pat, "row")
                pruned = nn.Linear(576, 1536, bias=False)
                pruned.weight.copy_(lin.weight * mask)
                for vf in ("fp16", "int4"):
                    mod = SparseLinear.from_float(pruned, mask, vf, pat.n, pat.m, group_size=64)
                    t, b = _paired(lambda: mod(x), lambda: lin(x), reps)
                    rows.append({"tokens": tokens, "variant": f"{spec} {vf} packed", "seconds": t,
                                 "dense_seconds_paired": b, "ratio_vs_dense": b / t, "kernel": mod.kernel})
                if not pat.is_nm:
                    mod = SparseLinear.from_float(pruned, mask, "fp16").use_csr()
                    t, b = _paired(lambda: mod(x), lambda: lin(x), reps)
                    rows.append({"tokens": tokens, "variant": f"{spec} torch.sparse CSR", "seconds": t,
                                 "dense_seconds_paired": b, "ratio_vs_dense": b / t, "kernel": mod.kernel})
    # 2:4 semi-structured kernels: CUDA only in torch; say so when this CPU has none
    try:
        from torch.sparse import to_sparse_semi_structured
        to_sparse_semi_structured(torch.zeros(64, 64, dtype=torch.float16))
        note = "to_sparse_semi_structured accepted a CPU tensor"
    except Exception as e:  # noqa: BLE001 - we report whatever torch says
        note = f"no 2:4 kernel on CPU: to_sparse_semi_structured -> {e.__class__.__name__}: {str(e).splitlines()[0][:120]}"
    rows.append({"tokens": None, "variant": "2:4 semi-structured kernel", "seconds": None, "ratio_vs_dense": None,
                 "kernel": note})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--parts", default="speed,bytes,quality", help="comma list of speed, bytes, quality")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sparsity.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    result = {"benchmark": "sparsity", "machine": machine_info(), "command": " ".join(["python", *sys.argv]),
              "note": "timings on a shared, busy machine are noisy; ratios are measured in the same run"}
    parts = set(a.parts.split(","))
    if a.skip_quality:
        parts.discard("quality")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    from sizewise.io.atomic import atomic_write_text

    if out.exists():  # parts not rerun keep their previous numbers, marked as such
        prev = json.loads(out.read_text())
        for part in ("speed", "bytes", "quality"):
            if part not in parts and part in prev:
                result[part] = prev[part]
                result.setdefault("carried_over", {})[part] = prev.get("command", "previous run")

    def write() -> None:  # after every part, so an interrupted run keeps what it measured
        result["seconds"] = time.perf_counter() - t0
        atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")

    if "quality" in parts:
        quality_and_table(result, a.model, a.quick)
        write()
    if "bytes" in parts:
        bytes_and_table(result, a.model, a.quick)
        write()
    if "speed" in parts:
        speed_and_table(result, a.quick)
        write()
    console.print(f"wrote {out}")


def speed_and_table(result: dict, quick: bool) -> None:
    result["speed"] = bench_speed(quick)
    t = Table(title="dense vs sparse matmul, 1536x576 (x dense > 1 = faster; dense timed alternately with each variant)")
    for c in ("tokens", "variant", "ms", "x dense", "kernel"):
        t.add_column(c)
    for r in result["speed"]:
        t.add_row(str(r["tokens"]), r["variant"], "" if r["seconds"] is None else f"{r['seconds'] * 1e3:.3f}",
                  "" if r["ratio_vs_dense"] is None else f"{r['ratio_vs_dense']:.2f}", r["kernel"])
    console.print(t)


def bytes_and_table(result: dict, model: str, quick: bool) -> None:
    result["bytes"] = bench_bytes(model, quick)
    t = Table(title="bytes of the pruned tensors vs the same tensors dense fp16")
    for c in ("case", "ratio", "target", "met", "checkpoint / dense fp16 checkpoint", "reload identical"):
        t.add_column(c)
    for r in result["bytes"]:
        t.add_row(r["case"], f"{r['ratio']:.4f}", "" if r["target"] is None else f"<= {r['target']}",
                  "" if r["met"] is None else ("met" if r["met"] else "MISSED"), f"{r['checkpoint_ratio']:.4f}",
                  str(r["reload_identical_logits"]))
    console.print(t)


def quality_and_table(result: dict, model: str, quick: bool) -> None:
    # the whole grid: 0.5 / 2:4 / 4:8 for all three criteria, one-shot 0.6-0.8 for magnitude and
    # Wanda, progressive Wanda 0.3 -> 0.8 with 32 recovery steps of 256 tokens after each level
    cfg = StudyConfig(model=model, recovery_steps=32)
    if quick:
        cfg = StudyConfig.quick(model)
    with tempfile.TemporaryDirectory() as d:
        q = run_study(d, cfg, console=console, command=result["command"])
    result["quality"] = {"dense": q["dense"], "rows": q["rows"], "targets": q["claims"], "config": q["config"]}
    t = Table(title="quality targets")
    t.add_column("target")
    t.add_column("numbers")
    t.add_column("met")
    for name, c in q["claims"].items():
        t.add_row(name, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in c.items() if k != "holds"), "met" if c["holds"] else "MISSED")
    console.print(t)


if __name__ == "__main__":
    main()
