"""`sizewise export --to gguf` verified in llama.cpp on the bundled model, full protocol.

    .venv/bin/python benchmarks/bench_export_gguf.py [--tokens 8192] [--runs 3] [--work DIR]

For each recipe (int8-wo, int4-g64, int4-gptq-g64): compress the bundled model, export it to GGUF,
then, window by window on the protocol text (pydoc topics, no BOS, 512-token windows):
  * sizewise's perplexity of the checkpoint, llama.cpp's of the export (within 1 %?),
  * KLD(sizewise checkpoint || llama.cpp export) (<= 0.02?), beside the floor: KLD(sizewise fp32
    parent || llama.cpp on the bundled Q4_1 file itself), and KLD of each against the fp32 parent,
  * greedy continuations of a few prompts: how many leading tokens agree (>= 8?),
  * file bytes against `sizewise estimate`'s figure for that GGUF mix (within 1 %?).
Speed: llama.cpp prefill (512 tokens) and batch-1 decode (32 tokens) tok/s of each export and of the
bundled Q4_1 file, runs interleaved across files and repeated (median), 2 threads.
Writes benchmarks/results/export_gguf.json (machine, command). The machine may be shared: timings noisy.
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

RECIPES = ["int8-wo", "int4-g64", "int4-gptq-g64", "int4-g32-s6"]
PROMPTS = ["The Python language reference describes", "A list comprehension is", "def fibonacci(n):\n"]




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/sizewise-bench-export-gguf")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/export_gguf.json"))
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    import sizewise
    from sizewise.evaluate import data, machine, metrics
    from sizewise.export import gguf as G
    from sizewise.export.common import divergence, greedy_reference, leading_agreement
    from sizewise.export import llamacpp as L
    from sizewise.io.bundled import bundled_gguf_path
    from sizewise.io.model_load import load_model

    if L.available():
        sys.exit(L.available())
    threads = machine.set_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    parent = load_model("bundled", "fp32")
    tok = parent.tokenizer
    rows: dict[str, dict] = {}
    for r in RECIPES:
        ck = work / r
        t0 = time.perf_counter()
        if not (ck / "sizewise.json").is_file():
            calib = data.calib_tokens(tok, 16, 256)
            m = sizewise.compress(load_model("bundled", "fp32").model, r, calib_tokens=calib)
            sizewise.save(m, tok, ck, parent=bundled_gguf_path(), force=True)
            del m
        t1 = time.perf_counter()
        rep = G.export(str(ck), work / f"{r}.gguf", force=True, measure_tokens=2048)
        rows[r] = {"compress_s": t1 - t0, "export_s": time.perf_counter() - t1, "file": str(work / f"{r}.gguf"),
                   "bytes": rep["bytes"], "estimate": rep["estimate"], "types": rep["types"],
                   "fp16_rounding": {k: v for k, v in rep["fp16_rounding"].items() if k != "by_tensor"},
                   "export_kld_vs_src": rep["kld_vs_src"], "requantized": len(rep["requantized"])}
        print(r, "exported", rep["bytes"], f"{rows[r]['export_s']:.0f} s", flush=True)
    files = {"bundled-q4_1": bundled_gguf_path(), **{r: Path(rows[r]["file"]) for r in RECIPES}}

    # quality, window by window (all models resident; logits are never stored for the whole text)
    toks = data.eval_tokens(tok, args.tokens)
    ws = data.windows(toks, 512)
    ckpts = {r: load_model(str(work / r)).model for r in RECIPES}
    llms = {k: L.open_model(p, threads=threads) for k, p in files.items()}
    acc = {k: {"nll_sw": 0.0, "nll_lc": 0.0, "kld_sw_lc": 0.0, "kld_parent_lc": 0.0, "kld_parent_sw": 0.0,
               "top1_sw_lc": 0} for k in files}
    n_pred = 0

    def lsm(x):
        return F.log_softmax(torch.as_tensor(x).float(), -1)

    def kl(lp, lq):
        return float((lp.exp() * (lp - lq)).sum(-1).clamp(min=0).sum())

    with torch.inference_mode():
        for i, w in enumerate(ws):
            tgt = torch.tensor(w[1:])
            lp_parent = lsm(metrics._forward_logits(parent.model, w)[:-1])
            n_pred += len(w) - 1
            for k in files:
                lc = next(L.window_logits(llms[k], [w]))[:-1]
                lq = lsm(lc)
                a = acc[k]
                a["nll_lc"] -= float(lq[torch.arange(len(tgt)), tgt].sum())
                a["kld_parent_lc"] += kl(lp_parent, lq)
                sw = metrics._forward_logits(ckpts[k], w)[:-1] if k in ckpts else None
                if sw is not None:
                    ls = lsm(sw)
                    a["nll_sw"] -= float(ls[torch.arange(len(tgt)), tgt].sum())
                    a["kld_sw_lc"] += kl(ls, lq)
                    a["kld_parent_sw"] += kl(lp_parent, ls)
                    a["top1_sw_lc"] += int((sw.argmax(-1) == torch.as_tensor(lc).argmax(-1)).sum())
            print(f"window {i + 1}/{len(ws)}", flush=True)
    parent_ppl = None
    for k in files:
        a = acc[k]
        q = {"ppl_llamacpp": math.exp(a["nll_lc"] / n_pred), "kld_vs_fp32_parent_llamacpp": a["kld_parent_lc"] / n_pred}
        if k in ckpts:
            q.update(ppl_sizewise=math.exp(a["nll_sw"] / n_pred), kld_sizewise_vs_llamacpp=a["kld_sw_lc"] / n_pred,
                     top1_sizewise_vs_llamacpp=a["top1_sw_lc"] / n_pred,
                     kld_vs_fp32_parent_sizewise=a["kld_parent_sw"] / n_pred)
            q["ppl_diff_pct"] = 100 * (q["ppl_llamacpp"] / q["ppl_sizewise"] - 1)
        rows.setdefault(k, {"file": str(files[k]), "bytes": files[k].stat().st_size})["quality"] = q
    # greedy agreement
    for k in ckpts:
        agree, parts = [], []
        for p in PROMPTS:
            ids = tok(p, add_special_tokens=False)["input_ids"]
            a, b = greedy_reference(ckpts[k], ids, 16), L.greedy(llms[k], ids, 16)
            agree.append(leading_agreement(a, b))
            parts.append(divergence(ckpts[k], ids, a, b))  # where they part: sizewise's logit margin there
        rows[k]["greedy_leading_agree"] = agree
        rows[k]["greedy_divergence"] = parts
    del ckpts
    # speed: interleaved, repeated
    prefill_ids, prompt_ids, steps = toks[:512], toks[:64], 32
    times = {k: {"prefill": [], "decode": []} for k in files}
    for run in range(args.runs + 1):
        for k, llm in llms.items():
            pr, dr = L.speed_pass(llm, prefill_ids, prompt_ids, steps)
            if run:  # run 0 is the warm-up
                times[k]["prefill"].append(pr)
                times[k]["decode"].append(dr)
    for k in files:
        rows[k]["llamacpp_prefill_tok_s"] = sorted(times[k]["prefill"])[len(times[k]["prefill"]) // 2]
        rows[k]["llamacpp_decode_tok_s"] = sorted(times[k]["decode"])[len(times[k]["decode"]) // 2]
        rows[k]["llamacpp_runs"] = times[k]
    floor = rows["bundled-q4_1"]["quality"]["kld_vs_fp32_parent_llamacpp"]
    import llama_cpp
    res = {"what": __doc__.split("\n")[0], "tokens": args.tokens, "predicted": n_pred, "window": 512,
           "threads": threads, "llama_cpp": llama_cpp.__version__,
           "floor_kld_bundled_gguf_llamacpp_vs_sizewise_fp32_parent": floor, "rows": rows,
           "wall_s": time.perf_counter() - t_all, "machine": machine.machine_info(),
           "command": machine.command_line(),
           "note": "machine shared with other jobs while this ran: speeds are noisy, quality is deterministic"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, r in rows.items():
        print(k, json.dumps({x: r.get(x) for x in ("quality", "greedy_leading_agree", "llamacpp_prefill_tok_s",
                                                   "llamacpp_decode_tok_s", "bytes")}))
    print("floor", floor, "wall", res["wall_s"])


if __name__ == "__main__":
    main()
