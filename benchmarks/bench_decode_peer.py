"""Single stream against llama.cpp: batch-1 decode and 512-token prefill of sizewise's int4 recipes on the
path `eval`, `study` and `serve` use by default, beside llama.cpp on the bundled GGUF, in the same run.

    .venv/bin/python benchmarks/bench_decode_peer.py [--rounds 7] [--steps 64] [--recipes int4-g32-s6,...]

Rows (each compressed in memory from the bundled model, as `study` does):
  * sizewise RECIPE: the lean decoder with sizewise's CPU kernels (sizewise/kernels), the default;
  * sizewise RECIPE, aten kernels: the same recipe built with SIZEWISE_KERNELS=0 (the previous default:
    aten's int4 kernel, torch's bf16 head), the baseline the kernels replace;
  * llama.cpp: llama-cpp-python on the bundled Q4_1 GGUF (Q8_0 token table), 2 threads, the peer a single
    user picks instead.
Passes are interleaved (every row once per round, in rotating order), the first round is discarded as
warm-up, and the median, min and max of the rest are reported with each row's ratio to llama.cpp per round
(median and range), so a ratio is only claimed when its whole range is on one side of 1.
Also measured: the kernels' build time (a fresh cache directory, in a subprocess) and a second process's
start-up with the cached build. Writes benchmarks/results/decode_peer.json (machine, command).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_RECIPES = "int4-g32-s6,int4-gptq-g32-s6,int4-g32-s6-emb8"


def _startup(cache: str) -> float:
    """Seconds for a fresh interpreter to import sizewise.kernels and get the module (build or cache)."""
    code = "import time; t=time.perf_counter(); from sizewise import kernels; assert kernels.ops() is not None, kernels.why_not(); print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SIZEWISE_CACHE": cache},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=DEFAULT_RECIPES)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--no-baseline", action="store_true", help="skip the aten-kernel rows")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/decode_peer.json"))
    args = ap.parse_args()

    import copy

    import torch
    from rich.console import Console
    from rich.table import Table

    import sizewise
    from sizewise import kernels
    from sizewise.compression.packed import is_packed
    from sizewise.compression.recipes import get_recipe
    from sizewise.study_peers import sizewise_decoder_bits
    from sizewise.evaluate import data, machine
    from sizewise.evaluate.speed import batch1_pass, spread
    from sizewise.export import llamacpp as L
    from sizewise.io.atomic import atomic_write_json
    from sizewise.io.bundled import bundled_gguf_path
    from sizewise.io.model_load import load_model

    console = Console()
    if kernels.ops() is None:
        sys.exit(f"sizewise's kernels are not available here ({kernels.why_not()}): nothing to compare")
    why = L.available()
    if why:
        sys.exit(f"llama.cpp is not installed ({why}): `make peer`")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as cache:
        build_s = _startup(cache)  # compiles into the empty cache
        warm_s = [_startup(cache) for _ in range(3)]  # later processes load it
    console.print(f"kernels: build {build_s:.1f} s in a fresh cache; a second process starts them in "
                  f"{statistics.median(warm_s):.2f} s")

    def decoder_bits_per_weight(model) -> float | None:
        """Bits per weight of the decoder Linears as stored, priced as `study` prices a checkpoint's manifest."""
        return sizewise_decoder_bits({"tensors": {
            f"{name}.weight": {"scheme": mod.scheme, "shape": [mod.out_features, mod.in_features]}
            for name, mod in model.named_modules() if ".layers." in name and is_packed(mod)}})

    def build(r: str):
        cfg = get_recipe(r)
        calib = (data.calib_tokens(lm.tokenizer, cfg.calib_samples, cfg.calib_seq_len)
                 if getattr(cfg, "needs_calibration", False) else None)
        return sizewise.compress(copy.deepcopy(lm.model), cfg, calib_tokens=calib)

    lm = load_model("bundled")
    toks = data.eval_tokens(lm.tokenizer, 4096)
    prefill_ids, prompt_ids = toks[:512], toks[1024:1088]
    rows: dict[str, object] = {}
    bits: dict[str, float] = {}
    for r in args.recipes.split(","):
        m = build(r)
        rows[f"sizewise {r}"] = m
        bits[f"sizewise {r}"] = decoder_bits_per_weight(m)
        if not args.no_baseline:
            os.environ["SIZEWISE_KERNELS"] = "0"
            try:
                rows[f"sizewise {r}, aten kernels"] = build(r)
            finally:
                os.environ.pop("SIZEWISE_KERNELS")
    llm = L.open_model(bundled_gguf_path(), n_ctx=1024, threads=2, logits_all=False)
    names = list(rows) + ["llama.cpp"]

    def one(name: str) -> tuple[float, float]:
        if name == "llama.cpp":
            return L.speed_pass(llm, prefill_ids, prompt_ids, args.steps)
        aten = name.endswith("aten kernels")
        if aten:  # the model's modules already hold aten's layout; the head must not take the kernel either
            os.environ["SIZEWISE_KERNELS"] = "0"
        try:
            return batch1_pass(rows[name], prefill_ids, prompt_ids, args.steps)
        finally:
            os.environ.pop("SIZEWISE_KERNELS", None)

    res: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rnd in range(args.rounds + 1):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            res[n].append(one(n))
        console.print(f"round {rnd}{' (warm-up, discarded)' if rnd == 0 else ''}: " + ", ".join(
            f"{n} {res[n][-1][1]:.0f}" for n in names))
    res = {n: v[1:] for n, v in res.items()}
    peer = res["llama.cpp"]
    out_rows = []
    t = Table(title=f"batch-1 decode ({args.steps} tokens after 64) and 512-token prefill, tok/s, {args.rounds} interleaved rounds")
    for c in ("engine", "decoder bits/w", "decode median", "min-max", "x llama.cpp (median, range)", "prefill median",
              "x llama.cpp"):
        t.add_column(c, justify="left" if c == "engine" else "right")
    for n in names:
        dec = [d for _, d in res[n]]
        pre = [p for p, _ in res[n]]
        rd = [d / pd for (_, d), (_, pd) in zip(res[n], peer)]
        rp = [p / pp for (p, _), (pp, _) in zip(res[n], peer)]
        row = {"engine": n, "decoder_bits_per_weight": bits.get(n), "decode": spread(dec), "prefill": spread(pre),
               "decode_ratio_vs_llamacpp": spread(rd), "prefill_ratio_vs_llamacpp": spread(rp)}
        out_rows.append(row)
        t.add_row(n, f"{bits[n]:.2f}" if n in bits else ("4.5+Q8_0 table" if n == "llama.cpp" else ""),
                  f"{statistics.median(dec):.1f}", f"{min(dec):.1f}-{max(dec):.1f}",
                  f"{statistics.median(rd):.2f} ({min(rd):.2f}-{max(rd):.2f})", f"{statistics.median(pre):.0f}",
                  f"{statistics.median(rp):.2f} ({min(rp):.2f}-{max(rp):.2f})")
    console.print(t)
    atomic_write_json(Path(args.out), {
        "benchmark": "decode_peer", "rows": out_rows, "rounds": args.rounds, "steps": args.steps,
        "prefill_tokens": len(prefill_ids), "prompt_tokens": len(prompt_ids), "threads": 2,
        "kernels": {"build_s": build_s, "second_process_start_s": spread(warm_s)},
        "llamacpp_model": str(bundled_gguf_path().name), "machine": machine.machine_info(),
        "command": machine.command_line()})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
