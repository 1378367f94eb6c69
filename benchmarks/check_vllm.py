"""`sizewise export --to vllm` verified in vLLM (CPU build) on the bundled model, full protocol.

    .venv/bin/python benchmarks/check_vllm.py [--tokens 8192] [--vllm-python .venv-vllm/bin/python]
    (or `make check-vllm`, which builds the vLLM venv once first)

For each recipe (int4-ct-g64, int8-dyn, int8-wo): `sizewise compress bundled --recipe R`, then
`sizewise export --to vllm`, then, in a separate process under the vLLM venv (vLLM pins its own
torch; sizewise is never imported there), `vllm.LLM(export, enforce_eager=True)`:
  * greedy continuations of a few prompts (token ids in, token ids out) against sizewise's own greedy
    decode of the same checkpoint: how many leading tokens agree;
  * protocol perplexity (pydoc topics, no BOS, 512-token windows each scored on its own) from vLLM's
    prompt logprobs, against `sizewise eval` of the same checkpoint;
  * which linear kernel vLLM picked (from its log) and how long `LLM(...)` took to load.
Writes benchmarks/results/vllm_check.json (machine, command, versions). Why the two-process shape:
vLLM's CPU wheel pins torch 2.13.0+cpu and its own transformers; the worker reads only JSON files
that the main process wrote (tokens, prompts) and writes JSON back.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["int4-ct-g64", "int8-dyn", "int8-wo"]
PROMPTS = ["The Python language reference describes", "A list comprehension is", "def fibonacci(n):\n"]
NEW_TOKENS = 32
WINDOW = 512


# --- worker: runs under the vLLM venv, imports vllm only -------------------------------------------

def worker(model_dir: str, job_path: str, result_path: str) -> None:
    """Load the export in vLLM, greedy-decode the prompts, score the protocol windows."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    job = json.loads(Path(job_path).read_text())
    t0 = time.perf_counter()
    llm = LLM(model=model_dir, enforce_eager=True, max_model_len=job["window"] + NEW_TOKENS + 64,
              enable_prefix_caching=False, seed=0)
    load_s = time.perf_counter() - t0
    greedy = SamplingParams(temperature=0.0, max_tokens=job["new_tokens"])
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in job["prompts"]], greedy)
    continuations = [list(o.outputs[0].token_ids) for o in outs]
    toks, w = job["tokens"], job["window"]
    windows = [toks[i:i + w] for i in range(0, len(toks) - 1, w) if len(toks[i:i + w]) > 1]
    score = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    t1 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=win) for win in windows], score)
    nll, n = 0.0, 0
    for win, o in zip(windows, outs):
        for pos, lp in enumerate(o.prompt_logprobs[1:], start=1):  # the first token has no prediction
            nll -= lp[win[pos]].logprob
            n += 1
    Path(result_path).write_text(json.dumps({
        "load_s": round(load_s, 1), "score_s": round(time.perf_counter() - t1, 1),
        "continuations": continuations, "nll": nll, "predicted": n, "ppl": math.exp(nll / n),
        "dtype": str(llm.llm_engine.model_config.dtype).replace("torch.", "")}))


# --- main: runs under the sizewise venv ---------------------------------------------------------------

def _sizewise(*args: str) -> str:
    exe = Path(sys.executable).with_name("sizewise")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"sizewise {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout




def _kernels(log: str) -> list[str]:
    """The linear-kernel lines vLLM logs while building the quantized layers (e.g. CPUWNA16LinearKernel)."""
    return sorted(set(re.findall(r"\b(\w+LinearKernel|\w+ScaledMM\w*Kernel)\b", log)))


def _reason(log: str) -> list[str]:
    """Why vLLM refused: its own error lines (kernel search reasons first), without the log prefixes."""
    lines = [re.sub(r"^\(\w+ pid=\d+\) (ERROR|INFO|WARNING) [\d\- :]+\[[^\]]+\] ?", "", ln).strip()
             for ln in log.splitlines()]
    keep = [ln for ln in lines if "cannot implement" in ln or ln.startswith(("ValueError", "RuntimeError"))]
    return keep[:8] or lines[-8:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm/bin/python"))
    ap.add_argument("--work", default="/tmp/sizewise-check-vllm")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/vllm_check.json"))
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "JOB", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    sys.path.insert(0, str(ROOT))
    from sizewise.evaluate import data, machine
    from sizewise.export.common import greedy_reference, leading_agreement
    from sizewise.io.model_load import load_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vver = subprocess.run([args.vllm_python, "-c", "import vllm, torch; print(vllm.__version__, torch.__version__)"],
                          capture_output=True, text=True)
    if vver.returncode != 0:
        raise SystemExit(f"no vLLM at {args.vllm_python}: run `make check-vllm` (it builds .venv-vllm)\n{vver.stderr[-800:]}")
    results = []
    for recipe in args.recipes.split(","):
        ck, ex = work / recipe, work / f"{recipe}-vllm"
        if not (ck / "sizewise.json").is_file():
            _sizewise("compress", "bundled", "--recipe", recipe, "--out", str(ck), "--force", "--no-record")
        report = json.loads(_sizewise("export", str(ck), "--to", "vllm", "--out", str(ex), "--force", "--json",
                                      "--no-record"))
        ev = json.loads(_sizewise("eval", str(ck), "--tokens", str(args.tokens), "--no-speed", "--json", "--no-record"))
        lm = load_model(str(ck))
        prompts = [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        ours = [greedy_reference(lm.model, p, NEW_TOKENS) for p in prompts]
        tokens = data.eval_tokens(lm.tokenizer, args.tokens)
        del lm
        job = work / f"{recipe}-job.json"
        job.write_text(json.dumps({"prompts": prompts, "new_tokens": NEW_TOKENS, "tokens": tokens, "window": WINDOW}))
        res_path = work / f"{recipe}-vllm-result.json"
        res_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
               "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run([args.vllm_python, __file__, "--worker", str(ex), str(job), str(res_path)],
                           capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        log = p.stdout + p.stderr
        (work / f"{recipe}-vllm.log").write_text(log)
        if p.returncode != 0 or not res_path.is_file():
            results.append({"recipe": recipe, "ok": False, "export_format": report.get("format"),
                            "schemes": report.get("schemes"), "error": _reason(log)})
            print(f"{recipe}: vLLM failed (log in {work / f'{recipe}-vllm.log'})")
            continue
        v = json.loads(res_path.read_text())
        leads = [leading_agreement(a, b) for a, b in zip(ours, v["continuations"])]
        sw_ppl = ev.get("quality", ev).get("ppl") if isinstance(ev.get("quality", ev), dict) else None
        row = {"recipe": recipe, "ok": True, "export_format": report.get("format"),
               "schemes": report.get("schemes"), "requantized": len(report.get("requantized", [])),
               "kernels": _kernels(log), "vllm_dtype": v["dtype"], "load_s": v["load_s"], "worker_wall_s": round(wall, 1),
               "ppl_vllm": round(v["ppl"], 4), "ppl_sizewise": sw_ppl, "predicted_vllm": v["predicted"],
               "ppl_rel_diff": round(v["ppl"] / sw_ppl - 1, 5) if sw_ppl else None,
               "greedy_leading_agree": leads, "greedy_new_tokens": NEW_TOKENS,
               "greedy_sizewise": ours, "greedy_vllm": v["continuations"]}
        results.append(row)
        print(f"{recipe}: kernels {row['kernels']} load {v['load_s']} s; ppl vLLM {v['ppl']:.3f} vs sizewise "
              f"{sw_ppl} ({row['ppl_rel_diff']:+.3%}); greedy agree {leads}/{NEW_TOKENS}")
    out = {"results": results, "tokens": args.tokens, "window": WINDOW, "prompts": PROMPTS,
           "vllm": vver.stdout.strip(), "machine": machine.machine_info(),
           "command": machine.command_line()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
