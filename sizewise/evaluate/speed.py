"""Speed and memory per the protocol: prefill tok/s at 512 tokens, greedy decode tok/s with a KV
cache at batch 1 and 8, median of 3 timed runs after one warm-up, torch threads = cores, peak RSS.

Variants are compared in one process, so ratios to the baseline come from the same run. Decode
runs through `generate.make_decoder` (static-cache lean loop for Llama-family models), which is
the overhead-free path the quantized kernels are meant for.
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from sizewise.evaluate.generate import make_decoder

PREFILL_TOKENS = 512
DECODE_PROMPT = 64
DECODE_STEPS = 32
RUNS = 3


# --- memory ---------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """High-water RSS since the last `reset_peak_rss()` (Linux VmHWM), else since process start."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS ("5" > clear_refs, Linux >= 4.0), so a
    variant's peak is its own, not the largest of everything run before it in this process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- timing ---------------------------------------------------------------------------------

@dataclass
class Timing:
    """Median of `runs` timed repetitions after `warmup` untimed ones."""

    median_s: float
    runs_s: list[float]
    warmup: int
    compile_s: float | None = None  # torch.compile time paid before the runs, if compiled

    @property
    def spread(self) -> float:
        return (max(self.runs_s) - min(self.runs_s)) / self.median_s if self.median_s else 0.0


def timed(fn: Callable[[], object], runs: int = RUNS, warmup: int = 1,
          setup: Callable[[], object] | None = None) -> Timing:
    """Run `fn` warmup + runs times; `setup` runs untimed before each call."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    times = []
    for _ in range(runs):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times, warmup)


@dataclass
class Speed:
    prefill_tokens: int
    prefill_tok_s: float
    decode_tok_s: dict[int, float]  # batch -> tokens/s (all rows together)
    decode_steps: int
    decode_prompt: int
    runs: int
    warmup: int
    decoder: str  # "lean-static-cache" | "hf-dynamic-cache"
    peak_rss_bytes: int
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decode_tok_s"] = {str(k): v for k, v in self.decode_tok_s.items()}
        return d


def _prompts(tokens: Sequence[int], batch: int, length: int) -> torch.Tensor:
    need = batch * length
    if len(tokens) < need:
        raise ValueError(f"need {need} tokens for {batch} prompts of {length}, have {len(tokens)}")
    return torch.tensor(tokens[:need], dtype=torch.long).view(batch, length)


def prefill_speed(model, tokens: Sequence[int], n: int = PREFILL_TOKENS, runs: int = RUNS,
                  warmup: int = 1) -> tuple[float, Timing]:
    """Tokens/s to prefill one sequence of `n` tokens (KV cache filled, last logits computed)."""
    dec = make_decoder(model, 1, n)
    ids = _prompts(tokens, 1, n)
    t = timed(lambda: dec.forward(ids), runs, warmup, setup=dec.reset)
    return n / t.median_s, t


def decode_speed(model, tokens: Sequence[int], batch: int, steps: int = DECODE_STEPS,
                 prompt_len: int = DECODE_PROMPT, runs: int = RUNS, warmup: int = 1,
                 compile: bool = False) -> tuple[float, Timing]:
    """Greedy decode tokens/s at `batch` (rows x steps / time), prefill excluded from the clock.

    compile: torch.compile the one-token step first (lean decoder only); the compile time is
    returned in Timing.compile_s, never hidden in the rate."""
    dec = make_decoder(model, batch, prompt_len + steps + 1)
    compile_s = None
    if compile:
        if not hasattr(dec, "compile_step"):
            raise ValueError("torch.compile decode needs the lean decoder (Llama-family model)")
        compile_s = dec.compile_step()
    prompt = _prompts(tokens, batch, prompt_len)
    state = {}

    def setup():
        dec.reset()
        state["tok"] = dec.forward(prompt).argmax(dim=-1, keepdim=True)

    def run():
        tok = state["tok"]
        for _ in range(steps):
            tok = dec.forward(tok).argmax(dim=-1, keepdim=True)

    t = timed(run, runs, warmup, setup=setup)
    t.compile_s = compile_s
    return batch * steps / t.median_s, t


def measure_speed(model, tokens: Sequence[int], batches: Sequence[int] = (1, 8),
                  prefill_tokens: int = PREFILL_TOKENS, steps: int = DECODE_STEPS,
                  prompt_len: int = DECODE_PROMPT, runs: int = RUNS, warmup: int = 1,
                  on_phase: Callable[[str], None] | None = None, compile: bool = False) -> Speed:
    """Prefill and decode speed of one model, plus the RSS high-water mark while measuring it."""
    reset_peak_rss()
    if on_phase:
        on_phase("prefill")
    pf, pf_t = prefill_speed(model, tokens, prefill_tokens, runs, warmup)
    dec, timings = {}, {"prefill": asdict(pf_t)}
    for b in batches:
        if on_phase:
            on_phase(f"decode b{b}")
        dec[b], t = decode_speed(model, tokens, b, steps, prompt_len, runs, warmup, compile=compile)
        timings[f"decode_b{b}"] = asdict(t)
    kind = type(make_decoder(model, 1, 2)).__name__
    name = "lean-static-cache" if kind == "LeanDecoder" else "hf-dynamic-cache"
    return Speed(prefill_tokens=prefill_tokens, prefill_tok_s=pf, decode_tok_s=dec, decode_steps=steps,
                 decode_prompt=prompt_len, runs=runs, warmup=warmup,
                 decoder=name + ("+torch.compile" if compile else ""),
                 peak_rss_bytes=peak_rss_bytes(), timings=timings)


def timed_load(load: Callable[[], object]) -> tuple[object, float]:
    """(result, seconds): load time is part of what a user pays for a variant."""
    t0 = time.perf_counter()
    out = load()
    return out, time.perf_counter() - t0


def dir_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a file or every file under a directory (apparent bytes)."""
    p = os.fspath(path)
    if os.path.isfile(p):
        return os.path.getsize(p)
    total = 0
    for root, _, files in os.walk(p):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


# --- interleaved (paired) speed: what study and compare report ----------------------------------

def prefill_task(name: str, model, tokens: Sequence[int], n: int = PREFILL_TOKENS):
    """A timing.Task that prefills one `n`-token sequence (cache reset untimed before each run)."""
    from sizewise.registry.timing import Task

    dec = make_decoder(model, 1, n)
    ids = _prompts(tokens, 1, n)
    return Task(name, lambda: dec.forward(ids), setup=dec.reset, work=float(n)), dec


def decode_task(name: str, model, tokens: Sequence[int], batch: int, steps: int = DECODE_STEPS,
                prompt_len: int = DECODE_PROMPT, compile: bool = False):
    """A timing.Task that decodes `steps` greedy tokens for `batch` rows (prompt prefill untimed)."""
    from sizewise.registry.timing import Task

    dec = make_decoder(model, batch, prompt_len + steps + 1)
    compile_s = None
    if compile:
        if not hasattr(dec, "compile_step"):
            raise ValueError("torch.compile decode needs the lean decoder (Llama-family model)")
        compile_s = dec.compile_step()
    prompt = _prompts(tokens, batch, prompt_len)
    state = {}

    def setup():
        dec.reset()
        state["tok"] = dec.forward(prompt).argmax(dim=-1, keepdim=True)

    def run():
        tok = state["tok"]
        for _ in range(steps):
            tok = dec.forward(tok).argmax(dim=-1, keepdim=True)

    t = Task(name, run, setup=setup, work=float(batch * steps))
    t.compile_s = compile_s  # type: ignore[attr-defined]
    return t, dec


def interleaved_speed(models: dict, tokens: Sequence[int], batches: Sequence[int] = (1, 8),
                      prefill_tokens: int = PREFILL_TOKENS, steps: int = DECODE_STEPS,
                      prompt_len: int = DECODE_PROMPT, min_rounds: int = 4, max_rounds: int = 8,
                      warmup: int = 1, compile: bool = False, prefill: bool = True,
                      on_phase: Callable[[str], None] | None = None, load=None) -> dict:
    """Prefill and decode speed of several models measured in turns (registry/timing.py), so
    every ratio to the first model comes from paired rounds under the same machine load.

    Returns {"reference": first name, "models": {name: Speed-shaped dict}, "ratios": {metric:
    {name: Ratio dict}}, "verdicts": {metric: {name: Verdict dict}}, "load": LoadSummary dict,
    "rounds": n}. Metrics: "prefill", "decode_b<B>"; a ratio is how many times faster than the
    reference. Each model's tok/s is from its median run, as in `measure_speed`.
    """
    from sizewise.registry.timing import interleave

    names = list(models)
    ref = names[0]
    tasks, groups, compile_s = [], [], {}
    metrics = (["prefill"] if prefill else []) + [f"decode_b{b}" for b in batches]
    if on_phase:
        on_phase("timing setup")
    for metric in metrics:
        group = []
        for n in names:
            key = f"{n}/{metric}"
            if metric == "prefill":
                t, _ = prefill_task(key, models[n], tokens, prefill_tokens)
            else:
                t, _ = decode_task(key, models[n], tokens, int(metric[len("decode_b"):]), steps, prompt_len, compile)
                compile_s[key] = getattr(t, "compile_s", None)
            tasks.append(t)
            group.append(key)
        groups.append(group)
    if on_phase:
        on_phase(f"interleaved timing ({len(names)} models)")
    res = interleave(tasks, groups, min_rounds=min_rounds, max_rounds=max_rounds, warmup=warmup,
                     **({"load": load} if load is not None else {}))
    out_models = {}
    for n in names:
        kind = type(make_decoder(models[n], 1, 2)).__name__
        dname = ("lean-static-cache" if kind == "LeanDecoder" else "hf-dynamic-cache") + ("+torch.compile" if compile else "")
        timings = {m: {"median_s": statistics.median(res.times[f"{n}/{m}"]), "runs_s": res.times[f"{n}/{m}"],
                       "warmup": warmup, "compile_s": compile_s.get(f"{n}/{m}")} for m in metrics}
        out_models[n] = {
            "prefill_tokens": prefill_tokens,
            "prefill_tok_s": res.rate(f"{n}/prefill") if prefill else None,
            "decode_tok_s": {str(b): res.rate(f"{n}/decode_b{b}") for b in batches},
            "decode_steps": steps, "decode_prompt": prompt_len, "runs": res.rounds, "warmup": warmup,
            "decoder": dname, "timings": timings}
    ratios, verdicts = {}, {}
    for m in metrics:
        ratios[m], verdicts[m] = {}, {}
        for n in names[1:]:
            r = res.ratio(f"{n}/{m}", f"{ref}/{m}")
            ratios[m][n] = r.to_dict()
            verdicts[m][n] = res.verdict(f"{n}/{m}", f"{ref}/{m}").to_dict()
    return {"reference": ref, "models": out_models, "ratios": ratios, "verdicts": verdicts,
            "load": res.load.to_dict(), "load_text": res.load.text(), "rounds": res.rounds, "warmup": warmup,
            "order": "interleaved, alternating AB/BA per round, warm-up discarded"}


def batch1_pass(model, prefill_ids: Sequence[int], prompt_ids: Sequence[int], steps: int) -> tuple[float, float]:
    """One untimed-setup pass beside another engine's (eval --peer, the export benchmarks): prefill of
    `prefill_ids` (tok/s) and greedy batch-1 decode of `steps` tokens after `prompt_ids` (tok/s), on the
    decoder `eval` uses; the caller interleaves passes and drops a warm-up."""
    with torch.inference_mode():
        pre = make_decoder(model, 1, len(prefill_ids))
        t0 = time.perf_counter()
        pre.forward(torch.tensor([list(prefill_ids)]))
        tp = time.perf_counter() - t0
        dec = make_decoder(model, 1, len(prompt_ids) + steps + 1)
        tok = dec.forward(torch.tensor([list(prompt_ids)])).argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = dec.forward(tok).argmax(-1, keepdim=True)
        td = time.perf_counter() - t0
    return len(prefill_ids) / tp, steps / td


def spread(xs: Sequence[float]) -> dict:
    """Median, min and max of repeated rates (and the runs), as the peer tables print them."""
    xs = list(xs)
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}

