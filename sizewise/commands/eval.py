"""`sizewise eval MODEL [--against PARENT]`: quality (ppl, KLD, top-1), size, load time, speed, RSS.

The parent (if any) is scored first and freed; then the candidate is loaded (timed) and scored
on the same tokens, so KLD/top-1 compare like with like and the candidate's peak RSS is its own.
"""
from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

from sizewise.compression.packed import count_params
from sizewise.errors import SizewiseError


def _size_on_disk(path: Path) -> int:
    from sizewise.evaluate.speed import dir_bytes

    if path.is_file():
        return dir_bytes(path)
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin")) or list(path.glob("*.gguf"))
    return sum(dir_bytes(f) for f in files)


def evaluate(model: str, against: str | None = None, text_files: list[str] | None = None, tokens: int = 8192,
             window: int = 512, speed: bool = True, dtype: str = "auto", progress: bool = True,
             decode_steps: int = 32, runs: int = 3, peers: list[str] | None = None) -> dict:
    """Everything `sizewise eval` reports, as one JSON-able dict. peers ("llamacpp"): the same weights in
    that engine beside sizewise (evaluate/llamacpp_peer.py), under result["peers"][name]."""
    import torch

    from sizewise.evaluate import data, machine, metrics
    from sizewise.evaluate import speed as sp
    from sizewise.io.bundled import resolve_path
    from sizewise.io.model_load import load_model
    from sizewise.study import kernels_of

    if tokens < 2:
        raise SizewiseError(f"--tokens {tokens} is too few: give at least 2")
    if window < 2:
        raise SizewiseError(f"--window must be at least 2, got {window}")
    for f in text_files or []:
        if not Path(f).is_file():
            raise SizewiseError(f"text file not found: {f} (pass an existing UTF-8 text file to --text)")
    for spec in [model] + ([against] if against else []):
        if not resolve_path(spec).exists():
            raise SizewiseError(f"model not found: {spec} (give a .gguf file, an HF or sizewise directory, or 'bundled')")
    threads = machine.set_threads()
    text = data.corpus_text(text_files) if text_files else None
    bar = _Bar(progress)
    result: dict = {"model": model, "against": against}
    ref = None
    with bar:
        if against:
            bar.phase("loading parent")
            parent = load_model(against, torch.float32)
            toks = data.eval_tokens(parent.tokenizer, tokens, text)
            ref = metrics.build_reference(parent.model, toks, window, progress=lambda d, t: bar.step("parent windows", d, t))
            result["parent"] = {"source": str(parent.source), "kind": parent.kind, "quality": ref.quality.to_dict()}
            del parent
            gc.collect()
        sp.reset_peak_rss()
        bar.phase("loading model")
        lm = load_model(model, dtype)
        result.update(source=str(lm.source), kind=lm.kind, load_s=lm.load_s, bytes_on_disk=_size_on_disk(lm.source),
                      params={"total": count_params(lm.model)}, kernels=kernels_of(lm.model),
                      activation_dtype=str(_act_dtype(lm.model)).replace("torch.", ""))
        result["parameters"] = result["params"]["total"]  # deprecated alias of params.total (docs/vocabulary.md)
        if lm.manifest:
            result["recipe"] = lm.manifest.get("recipe_name") or lm.manifest.get("recipe")
        toks = data.eval_tokens(lm.tokenizer, tokens, text)
        if ref is not None:
            if len(ref.windows) and toks[:len(ref.windows[0])] != ref.windows[0]:
                raise SizewiseError("the model and --against tokenize the text differently: KLD/top-1 need the same tokenizer")
            q = metrics.compare(lm.model, ref, progress=lambda d, t: bar.step("windows", d, t))
        else:
            q = metrics.perplexity(lm.model, toks, window, progress=lambda d, t: bar.step("windows", d, t))
        result["quality"] = q.to_dict()
        if speed:
            need = max(sp.PREFILL_TOKENS, 8 * sp.DECODE_PROMPT)
            stoks = toks if len(toks) >= need else data.eval_tokens(lm.tokenizer, need, text)
            s = sp.measure_speed(lm.model, stoks, steps=decode_steps, runs=runs, on_phase=lambda p: bar.phase(p))
            result["speed"] = s.to_dict()
        result["peak_rss_bytes"] = sp.peak_rss_bytes()
        if peers:
            from sizewise.evaluate.llamacpp_peer import llamacpp_beside
            bar.phase("llama.cpp on the same weights")
            result["peers"] = {"llamacpp": llamacpp_beside(lm, toks, window, threads, speed=speed, runs=runs,
                                                           steps=decode_steps)}
    result["machine"] = machine.machine_info()
    result["command"] = machine.command_line()
    return result


def _act_dtype(model):
    if not hasattr(model, "get_input_embeddings") or model.get_input_embeddings() is None:
        return "unknown"
    from sizewise.compression.precision import stream_dtype
    return stream_dtype(model)


class _Bar:
    """One rich progress line; disabled for --json so stdout stays pure JSON (bars go to stderr)."""

    def __init__(self, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True), disable=not enabled, transient=True)
        self.t = self.p.add_task("", total=1)

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        return self.p.__exit__(*a)

    def phase(self, name: str) -> None:
        self.p.update(self.t, description=name, completed=0, total=1)

    def step(self, name: str, done: int, total: int) -> None:
        self.p.update(self.t, description=name, completed=done, total=total)


def print_result(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    q = r["quality"]
    t = Table(title=f"sizewise eval: {r['model']}" + (f" against {r['against']}" if r.get("against") else ""))
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("perplexity", f"{q['ppl']:.3f} ({q['n_predicted']:,} predicted tokens, {q['n_windows']} windows of {q['window']})")
    if r.get("parent"):
        t.add_row("parent perplexity", f"{r['parent']['quality']['ppl']:.3f}")
        t.add_row("KL divergence (parent||model)", f"{q['kld']:.5f} nats/token (max {q['kld_max']:.3f})")
        t.add_row("top-1 agreement", f"{100 * q['top1']:.2f} %")
    t.add_row("size on disk", f"{r['bytes_on_disk'] / 1e9:.4f} GB ({r['bytes_on_disk'] / 2**30:.4f} GiB)")
    t.add_row("parameters", f"{r['params']['total']:,}")
    t.add_row("load time", f"{r['load_s']:.2f} s")
    t.add_row("activation dtype", r["activation_dtype"])
    if "speed" in r:
        s = r["speed"]
        t.add_row(f"prefill ({s['prefill_tokens']} tokens)", f"{s['prefill_tok_s']:.1f} tok/s")
        for b, v in s["decode_tok_s"].items():
            t.add_row(f"decode batch {b}", f"{v:.1f} tok/s")
        t.add_row("decode loop", s["decoder"])
    t.add_row("peak RSS", f"{r['peak_rss_bytes'] / 2**20:.0f} MiB")
    for k, n in Counter(r["kernels"]).most_common():
        t.add_row("kernel", f"{k} x{n}")
    m = r["machine"]
    t.caption = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}; median of 3 after a warm-up"
    Console().print(t)
    for name, p in (r.get("peers") or {}).items():
        _print_peer(name, p, q)


def _print_peer(name: str, p: dict, q: dict) -> None:
    """The peer's table: quality on the same windows, speed in interleaved rounds with each round's ratio."""
    from rich.console import Console
    from rich.table import Table

    if "skipped" in p:
        print(f"peer {name} skipped: {p['skipped']}")
        return
    t = Table(title=f"{p['peer']} {p['version']} on the same weights ({p['gguf']}), {p['threads']} threads")
    for c in ("", "sizewise", p["peer"], "sizewise / peer"):
        t.add_column(c, justify="right")
    pq = p["quality"]
    t.add_row("perplexity", f"{q['ppl']:.3f}", f"{pq['ppl_llamacpp']:.3f}", f"{q['ppl'] / pq['ppl_llamacpp']:.4f}")
    t.add_row("KLD (sizewise || peer)", "", f"{pq['kld_sizewise_vs_llamacpp']:.5f}", "")
    t.add_row("top-1 agreement", "", f"{100 * pq['top1_sizewise_vs_llamacpp']:.2f} %", "")
    s = p.get("speed")
    if s:
        def cell(x: dict, fmt: str) -> str:
            return f"{x['median']:{fmt}} ({x['min']:{fmt}}-{x['max']:{fmt}})"
        t.add_row(f"prefill {s['prefill_tokens']} tok/s", cell(s["sizewise_prefill_tok_s"], ".0f"),
                  cell(s["llamacpp_prefill_tok_s"], ".0f"), cell(s["prefill_ratio"], ".2f"))
        t.add_row("decode batch 1 tok/s", cell(s["sizewise_decode_b1_tok_s"], ".1f"),
                  cell(s["llamacpp_decode_b1_tok_s"], ".1f"), cell(s["decode_ratio"], ".2f"))
        t.caption = (f"median (min-max) of {s['rounds']} rounds, sizewise and {p['peer']} alternating; "
                     "the ratio is taken within each round")
    Console().print(t)


def eval_command(model: str, against: str | None, text: list[str] | None, tokens: int, window: int,
                 no_speed: bool, json_out: bool, out: str | None, dtype: str = "auto", peer: str | None = None) -> dict:
    import json

    from sizewise.evaluate.llamacpp_peer import parse_peers
    peers = parse_peers(peer)
    r = evaluate(model, against, text, tokens, window, speed=not no_speed, dtype=dtype, progress=not json_out,
                 peers=peers)
    if out:
        from sizewise.io.atomic import atomic_write_json
        atomic_write_json(out, r)
    if json_out:
        print(json.dumps(r, indent=2))
    else:
        print_result(r)
        if out:
            print(f"wrote {out}")
    return r
