"""`sizewise export --to onnx` verified in ONNX Runtime on the bundled model, with llama.cpp on the same weights.

    .venv/bin/python benchmarks/bench_export_onnx.py [--tokens 8192] [--runs 3] [--work DIR]

Sources: the bundled Q4_1 GGUF itself (its blocks become MatMulNBits), and sizewise's int4-g64 and int8-wo
checkpoints of it. Each is exported to ONNX (4-bit MatMulNBits at accuracy_level 0, fp32 compute, and at
level 4, int8 activations per block as llama.cpp's dot products do) and to GGUF (for llama.cpp: the same
codes and scales). Then, on the protocol text (pydoc topics, no BOS, 512-token windows):
  * ONNX Runtime's perplexity against `sizewise eval` of the same source (within 1 %?),
    KLD(sizewise || onnxruntime) and top-1 agreement,
  * greedy continuations of three prompts through the graph's own KV cache against sizewise's
    reference (full re-run each step): leading tokens agreeing (>= 16?), and where they part, the
    reference's logit margin between the two tokens (a near-tie or a real difference),
  * speed, runs interleaved across engines and files, repeated (median, min-max): onnxruntime's,
    llama.cpp's and sizewise's own (the eager lean decoder that eval/study/serve use) prefill of 512
    tokens and batch-1 decode of 32 tokens after a 64-token prompt, 2 threads each.
Writes benchmarks/results/export_onnx.json (machine, command).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["The Python language reference describes", "A list comprehension is", "def fibonacci(n):\n"]
GREEDY_STEPS = 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/sizewise-bench-export-onnx")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/export_onnx.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    import sizewise
    from sizewise.evaluate import data, machine, metrics
    from sizewise.evaluate.speed import batch1_pass, spread
    from sizewise.export import gguf as G
    from sizewise.export import llamacpp as L
    from sizewise.export import onnx as X
    from sizewise.export.common import divergence, greedy_reference, leading_agreement
    from sizewise.io.bundled import bundled_gguf_path
    from sizewise.io.model_load import load_model

    have_llamacpp = L.available() is None
    if not have_llamacpp:
        print("llama.cpp peer skipped:", L.available())
    threads = machine.set_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    parent = load_model("bundled", "fp32")
    tok = parent.tokenizer

    # sources: (name, sizewise model, GGUF with the same weights)
    sources: dict[str, dict] = {"bundled-q4_1": {"src": "bundled", "model": parent.model, "gguf": bundled_gguf_path()}}
    for r in ("int4-g64", "int8-wo"):
        ck = work / r
        if not (ck / "sizewise.json").is_file():
            m = sizewise.compress(load_model("bundled", "fp32").model, r)
            sizewise.save(m, tok, ck, parent=bundled_gguf_path(), force=True)
            del m
        g = work / f"{r}.gguf"
        if not g.is_file():
            G.export(str(ck), g, force=True, measure_tokens=0)
        sources[r] = {"src": str(ck), "model": load_model(str(ck)).model, "gguf": g}

    # exports: (row name) -> (source, accuracy_level of the 4-bit nodes)
    exports = {"bundled-q4_1": ("bundled-q4_1", 0), "bundled-q4_1 acc4": ("bundled-q4_1", 4),
               "int4-g64": ("int4-g64", 0), "int4-g64 acc4": ("int4-g64", 4), "int8-wo": ("int8-wo", 0)}
    rows: dict[str, dict] = {}
    decoders = {}
    for name, (s, level) in exports.items():
        out = work / (name.replace(" ", "-") + ".onnx.d")
        t0 = time.perf_counter()
        loaded = parent if s == "bundled-q4_1" else None
        rep = X.export(sources[s]["src"], out, force=True, measure_tokens=0, accuracy_level=level, threads=threads,
                       loaded=loaded)
        rows[name] = {"source": s, "accuracy_level_4bit": level, "export_s": time.perf_counter() - t0,
                      "bytes": rep["bytes"], "ops": rep["ops"], "exact": rep["exact"],
                      "requantized": rep["requantized"], "export_check": rep["check"]}
        decoders[name] = X.OnnxDecoder(out, threads=threads)
        print(name, "exported", rep["bytes"], f"{rows[name]['export_s']:.0f} s", flush=True)

    # quality: ORT vs sizewise on the protocol text, window by window
    toks = data.eval_tokens(tok, args.tokens)
    ws = data.windows(toks, 512)
    acc = {n: {"nll_ort": 0.0, "nll_sw": 0.0, "kld": 0.0, "top1": 0, "maxdiff": 0.0} for n in exports}
    n_pred = 0
    with torch.inference_mode():
        for i, w in enumerate(ws):
            tgt = torch.tensor(w[1:])
            idx = torch.arange(len(tgt))
            n_pred += len(tgt)
            sw_logits = {s: metrics._forward_logits(sources[s]["model"], w)[:-1].float() for s in sources}
            for n, (s, _) in exports.items():
                ref = sw_logits[s]
                got = X.window_logits(decoders[n], w)[:-1]
                lp, lq = F.log_softmax(ref, -1), F.log_softmax(got, -1)
                a = acc[n]
                a["nll_sw"] -= float(lp[idx, tgt].sum())
                a["nll_ort"] -= float(lq[idx, tgt].sum())
                a["kld"] += float((lp.exp() * (lp - lq)).sum(-1).clamp(min=0).sum())
                a["top1"] += int((ref.argmax(-1) == got.argmax(-1)).sum())
                a["maxdiff"] = max(a["maxdiff"], float((ref - got).abs().max()))
            print(f"window {i + 1}/{len(ws)}", flush=True)
    for n, a in acc.items():
        q = {"ppl_onnxruntime": math.exp(a["nll_ort"] / n_pred), "ppl_sizewise": math.exp(a["nll_sw"] / n_pred),
             "kld_sizewise_vs_onnxruntime": a["kld"] / n_pred, "top1_sizewise_vs_onnxruntime": a["top1"] / n_pred,
             "max_abs_logit_diff": a["maxdiff"], "predicted": n_pred}
        q["ppl_diff_pct"] = 100 * (q["ppl_onnxruntime"] / q["ppl_sizewise"] - 1)
        rows[n]["quality"] = q

    # greedy through the graph's own KV cache against sizewise's reference
    for n, (s, _) in exports.items():
        agree, parts = [], []
        for p in PROMPTS:
            ids = tok(p, add_special_tokens=False)["input_ids"]
            ref = greedy_reference(sources[s]["model"], ids, GREEDY_STEPS)
            got = X.greedy_tokens(decoders[n], ids, GREEDY_STEPS)
            agree.append(leading_agreement(ref, got))
            parts.append(divergence(sources[s]["model"], ids, ref, got))
        rows[n]["greedy_leading_agree"] = agree
        rows[n]["greedy_divergence"] = parts
        print(n, "greedy", agree, flush=True)

    # speed: every engine and file, interleaved, repeated
    prefill_ids, prompt_ids, steps = toks[:512], toks[:64], 32
    llms = {s: L.open_model(src["gguf"], threads=threads, logits_all=False) for s, src in sources.items()} \
        if have_llamacpp else {}

    def ort_pass(dec):
        dec.reset()
        t0 = time.perf_counter()
        dec.forward(np.asarray([prefill_ids]))
        tp = time.perf_counter() - t0
        dec.reset()
        nxt = dec.forward(np.asarray([prompt_ids])).argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = dec.forward(nxt.numpy()).argmax(-1, keepdim=True)
        return len(prefill_ids) / tp, steps / (time.perf_counter() - t0)

    def llama_pass(llm):
        return L.speed_pass(llm, prefill_ids, prompt_ids, steps)

    def sw_pass(model):  # the decoder eval/study/serve use, the same pass eval --peer times
        return batch1_pass(model, prefill_ids, prompt_ids, steps)

    engines = {**{f"onnxruntime {n}": (ort_pass, d) for n, d in decoders.items()},
               **{f"llama.cpp {s}": (llama_pass, llm) for s, llm in llms.items()},
               **{f"sizewise {s}": (sw_pass, src["model"]) for s, src in sources.items()}}
    speed = {k: {"prefill": [], "decode": []} for k in engines}
    for run in range(args.runs + 1):
        for k, (fn, obj) in engines.items():
            p, d = fn(obj)
            if run:  # run 0 is the warm-up
                speed[k]["prefill"].append(p)
                speed[k]["decode"].append(d)
        print(f"speed round {run}/{args.runs}", flush=True)
    speed = {k: {"prefill_tok_s": spread(v["prefill"]), "decode_tok_s": spread(v["decode"])} for k, v in speed.items()}

    import onnxruntime
    res = {"what": __doc__.split("\n")[0], "tokens": args.tokens, "predicted": n_pred, "window": 512,
           "threads": threads, "onnxruntime": onnxruntime.__version__,
           "llama_cpp": __import__("llama_cpp").__version__ if have_llamacpp else None,
           "greedy_steps": GREEDY_STEPS, "prompts": PROMPTS, "rows": rows, "speed": speed,
           "wall_s": time.perf_counter() - t_all, "machine": machine.machine_info(),
           "command": machine.command_line()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"ONNX Runtime {onnxruntime.__version__} vs sizewise, {n_pred} protocol tokens")
    for c in ("export", "bytes", "ppl ORT", "ppl sizewise", "diff %", "KLD", "top-1", "greedy agree (of 16)"):
        t.add_column(c)
    for n, r in rows.items():
        q = r["quality"]
        t.add_row(n, f"{r['bytes'] / 1e6:.1f} MB", f"{q['ppl_onnxruntime']:.3f}", f"{q['ppl_sizewise']:.3f}",
                  f"{q['ppl_diff_pct']:+.2f}", f"{q['kld_sizewise_vs_onnxruntime']:.4f}",
                  f"{q['top1_sizewise_vs_onnxruntime']:.4f}", ",".join(map(str, r["greedy_leading_agree"])))
    Console().print(t)
    s = Table(title=f"speed, {threads} threads, median of {args.runs} interleaved rounds (min-max)")
    for c in ("engine / file", "prefill 512 tok/s", "decode b1 tok/s"):
        s.add_column(c)
    for k, v in speed.items():
        p, d = v["prefill_tok_s"], v["decode_tok_s"]
        s.add_row(k, f"{p['median']:.0f} ({p['min']:.0f}-{p['max']:.0f})",
                  f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})")
    Console().print(s)
    print("wall", f"{res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
