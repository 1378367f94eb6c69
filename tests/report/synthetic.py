"""A study.json and a compare result built from synthetic numbers through the real helpers
(timing verdicts, study ratios, paired NLL), so the report tests need no model and take no time."""
from __future__ import annotations

import numpy as np

from sizewise.registry.compare import quality_comparison
from sizewise.registry.timing import LoadSummary, judge, paired_ratio

MACHINE = {"cpu": "Synthetic CPU", "cores": 2, "torch_threads": 2, "torch": "2.13.0", "python": "3.11"}


def _load(background: float) -> LoadSummary:
    return LoadSummary(wall_s=10.0, cpus=2, background=background, own=0.9, background_max_round=background,
                       loadavg1=2.0 + 4 * background, freq_mhz_min=2596.0, freq_mhz_max=2596.0)


def _interleaved(speedup: float, jitter: float, background: float, base_s: float) -> dict:
    rng = np.random.default_rng(int(speedup * 100))
    base = list(base_s * (1 + jitter * rng.uniform(-1, 1, 6)))
    var = [b / speedup * (1 + jitter * rng.uniform(-1, 1)) for b in base]
    load = _load(background)
    r = paired_ratio("v", "parent", var, base)
    v = judge(r, load)
    metrics = ("prefill", "decode_b1", "decode_b8")
    return {"against": "fp32 parent", "rounds": 6, "ratios": {m: r.to_dict() for m in metrics},
            "verdicts": {m: v.to_dict() for m in metrics}, "load": load.to_dict(), "load_text": load.text(),
            "parent": {}}


def study(busy_recipe: str = "int4-g64") -> dict:
    from sizewise.study import CLAIMED, _add_ratios

    spec = [("fp32", 538.1e6, 14.937, 0.0, 1.0, None), ("bf16", 269.1e6, 14.932, 0.0012, 1.9, 0.01),
            ("int8-wo", 163.3e6, 14.935, 0.0031, 2.6, 0.01), ("int4-g64", 116.6e6, 18.666, 0.1946, 3.9, 0.01),
            ("int4-gptq-g64", 116.6e6, 15.659, 0.0452, 1.01, 0.03)]
    rows = []
    for name, size, ppl, kld, sx, jit in spec:
        sp = {"prefill_tokens": 512, "prefill_tok_s": 747 * sx, "decode_tok_s": {"1": 26.7 * sx, "8": 145 * sx},
              "decode_steps": 8, "decode_prompt": 64, "runs": 6, "warmup": 1, "decoder": "lean-static-cache"}
        if jit is not None:
            sp["interleaved"] = _interleaved(sx, jit, 0.4 if name == busy_recipe else 0.02, 0.3)
        rows.append({"recipe": name, "config": {"kind": name.split("-")[0], "name": name}, "notes": [],
                     "bytes": int(size), "expected_bytes": int(size), "activation_dtype": "float32",
                     "kernels": {f"kernel-of-{name}": 210}, "quality": {"ppl": ppl, "kld": kld, "top1": 1 - kld},
                     "speed": sp, "peak_rss_bytes": 2 ** 30, "matches_source_grid": False})
    _add_ratios(rows)
    return {"model": "bundled", "source": "/x/smollm2.gguf", "source_kind": "gguf",
            "parent": {"description": "smollm2.gguf dequantized to fp32", "params": 134515008,
                       "quality": {"ppl": 14.937, "n_predicted": 4088}},
            "settings": {"eval_tokens": 4096, "window": 512, "prefill_tokens": 512, "decode_steps": 8,
                         "decode_prompt": 64, "batches": [1, 8], "runs": 4, "max_rounds": 6,
                         "corpus": "pydoc_data.topics.topics"},
            "recipes": rows, "claimed": CLAIMED, "wall_s": 100.0, "machine": MACHINE,
            "command": "sizewise study bundled --quick"}


def compare() -> dict:
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 1.35, 2048)
    nll = {"fp32": a, "int8-wo": a + rng.normal(0, 0.05, 2048), "int4-g64": a * 1.05 + rng.normal(0, 0.2, 2048)}
    kld = {"fp32": np.zeros(2048), "int8-wo": np.full(2048, 0.003), "int4-g64": np.full(2048, 0.19)}
    agree = {"fp32": np.ones(2048, bool), "int8-wo": np.arange(2048) % 30 != 0, "int4-g64": np.arange(2048) % 4 != 0}
    q = quality_comparison(list(nll), nll, kld, agree)
    q["parent"] = "fp32"
    load = _load(0.02)
    sp = {"reference": "fp32", "rounds": 4, "warmup": 1, "load": load.to_dict(), "load_text": load.text(),
          "models": {n: {"prefill_tok_s": 700 * s, "decode_tok_s": {"1": 26 * s}} for n, s in
                     (("fp32", 1), ("int8-wo", 2.5), ("int4-g64", 3.9))}, "ratios": {}, "verdicts": {}}
    for m in ("prefill", "decode_b1"):
        sp["ratios"][m], sp["verdicts"][m] = {}, {}
        for n, s in (("int8-wo", 2.5), ("int4-g64", 3.9)):
            r = paired_ratio(n, "fp32", [1 / s, 1.02 / s, 0.99 / s, 1.01 / s], [1, 1, 1, 1])
            sp["ratios"][m][n], sp["verdicts"][m][n] = r.to_dict(), judge(r, load).to_dict()
    models = [{"name": n, "spec": f"./{n}", "source": f"/x/{n}", "kind": "sizewise" if n != "fp32" else "gguf",
               "bytes_on_disk": b, "lineage": {"parent": None if n == "fp32" else "/x/fp32", "recipe": None if n == "fp32" else n}}
              for n, b in (("fp32", 538e6), ("int8-wo", 163e6), ("int4-g64", 116e6))]
    return {"kind": "sizewise.compare", "format": 1, "reference": "fp32", "parent": "fp32", "models": models,
            "settings": {"n_predicted": 2048, "window": 512, "corpus": "pydoc_data.topics.topics"},
            "quality": q, "speed": sp, "machine": MACHINE, "command": "sizewise compare fp32 int8-wo int4-g64",
            "created": "2026-12-04T13:00:00+00:00"}
