"""`sizewise compare A B [C ...] [--parent P]`: which model is better, and is the difference real?

Quality is paired: every model scores the same tokens, and each is compared with the reference
(the first model) token by token (registry/compare.py: block-bootstrap interval of the mean
per-token NLL difference), so a 1 % difference can be told from noise on 4k tokens. KLD and
top-1 are against one common parent (`--parent`, default the first model) on those tokens.
Speed is interleaved (registry/timing.py): all models are loaded, then timed in turns in this
process, and the load of the machine is recorded; a ratio the run cannot support is printed
as an interval with the reason.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from sizewise.errors import SizewiseError

RESULT_KIND = "sizewise.compare"


def _labels(specs: list[str]) -> list[str]:
    """Short unique names for the table: the file/dir name, numbered when repeated."""
    out = []
    for s in specs:
        base = Path(s.rstrip("/")).name or s
        for suf in (".gguf", ".json"):
            base = base.removesuffix(suf)
        name, k = base, 2
        while name in out:
            name, k = f"{base}#{k}", k + 1
        out.append(name)
    return out


def _check_same_tokens(names: list[str], streams: dict[str, list[int]], vocab: dict[str, int]) -> None:
    ref = names[0]
    for n in names[1:]:
        if streams[n] != streams[ref] or vocab[n] != vocab[ref]:
            at = next((i for i, (x, y) in enumerate(zip(streams[n], streams[ref])) if x != y),
                      min(len(streams[n]), len(streams[ref])))
            raise SizewiseError(f"{n} and {ref} use different tokenizers (the text tokenizes differently from token "
                                f"{at}; vocab {vocab[n]:,} vs {vocab[ref]:,}): per-token NLL is not comparable, "
                                "compare models that share a tokenizer")


def _lineage(lm) -> dict:
    """Where a model came from, as far as its files say: the sizewise manifest's parent and recipe."""
    man = lm.manifest or {}
    parent = man.get("parent") or {}
    recipe = man.get("recipe_name") or man.get("recipe")
    if isinstance(recipe, dict):
        recipe = recipe.get("name") or recipe.get("kind")
    return {"parent": parent.get("path") if isinstance(parent, dict) else parent,
            "parent_sha256": parent.get("sha256") if isinstance(parent, dict) else None, "recipe": recipe}


def score_tokens(model, ref, own_logits: bool = False):
    """Per predicted token: NLL, KL(parent || model) and top-1 agreement with the parent, in
    corpus order (numpy arrays). own_logits: this model is the parent (reuse its logits)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sizewise.evaluate import metrics

    nll, kld, agree = [], [], []
    with torch.inference_mode():
        for i, w in enumerate(ref.windows):
            pl = ref.parent_logits(i).float()
            logits = pl if own_logits else metrics._forward_logits(model, w)
            if logits.shape[-1] != pl.shape[-1]:
                raise SizewiseError(f"the model's vocabulary ({logits.shape[-1]:,}) differs from the parent's "
                                    f"({pl.shape[-1]:,}): KLD needs the same tokenizer")
            tgt = torch.tensor(w[1:], dtype=torch.long)
            nll.append(F.cross_entropy(logits[:-1], tgt, reduction="none").numpy())
            k, a = metrics.kld_top1(pl[:-1], logits[:-1])
            kld.append(k.numpy())
            agree.append(a.numpy())
    return (np.concatenate(nll).astype(np.float64), np.concatenate(kld).astype(np.float64),
            np.concatenate(agree))


def compare_models(specs: list[str], parent: str | None = None, text_files: list[str] | None = None,
                   tokens: int = 4096, window: int = 512, block: int = 32, speed: bool = True,
                   batches: tuple[int, ...] = (1,), prefill_tokens: int = 512, decode_steps: int = 16,
                   decode_prompt: int = 64, rounds: int = 4, max_rounds: int = 10, dtype: str = "auto",
                   progress: bool = True) -> dict:
    """Everything `sizewise compare` reports, as one JSON-able dict (kind "sizewise.compare")."""
    import gc

    from sizewise.compression.packed import count_params
    from sizewise.commands.eval import _size_on_disk
    from sizewise.evaluate import data, machine, metrics
    from sizewise.evaluate import speed as sp
    from sizewise.io.bundled import resolve_path
    from sizewise.io.model_load import load_model
    from sizewise.registry.compare import quality_comparison
    from sizewise.study import kernels_of

    if len(specs) < 2:
        raise SizewiseError("compare needs at least two models: sizewise compare A B [C ...]")
    if tokens < window or window < 2:
        raise SizewiseError(f"--tokens ({tokens}) must be at least one --window ({window}) and the window at least 2")
    if block < 1:
        raise SizewiseError(f"--block must be at least 1 token, got {block}")
    if rounds < 2 or max_rounds < rounds:
        raise SizewiseError(f"--rounds must be at least 2 and --max-rounds at least --rounds (got {rounds}, {max_rounds})")
    for s in specs + ([parent] if parent else []):
        if not resolve_path(s).exists():
            raise SizewiseError(f"model not found: {s} (give a .gguf file, an HF or sizewise directory, or 'bundled')")
    for f in text_files or []:
        if not Path(f).is_file():
            raise SizewiseError(f"text file not found: {f} (pass an existing UTF-8 text file to --text)")
    machine.set_threads()
    text = data.corpus_text(text_files) if text_files else None
    names = _labels(specs + ([parent] if parent and parent not in specs else []))
    model_names = names[:len(specs)]
    parent_name = model_names[specs.index(parent)] if parent in specs else (names[-1] if parent else model_names[0])

    from sizewise.commands.eval import _Bar
    bar = _Bar(progress)
    loaded, streams, vocab = {}, {}, {}
    with bar:
        for n, s in zip(names, specs + ([parent] if parent and parent not in specs else [])):
            bar.phase(f"loading {n}")
            loaded[n] = load_model(s, dtype if n in model_names else "fp32")
            streams[n] = data.eval_tokens(loaded[n].tokenizer, tokens, text)
            vocab[n] = len(loaded[n].tokenizer)
        _check_same_tokens(names, streams, vocab)
        toks = streams[names[0]]
        bar.phase(f"parent {parent_name}: reference")
        ref = metrics.build_reference(loaded[parent_name].model, toks, window,
                                      progress=lambda d, t: bar.step(f"{parent_name} windows", d, t))
        nll, kld, agree = {}, {}, {}
        for n in model_names:
            bar.phase(f"{n}: scoring")
            nll[n], kld[n], agree[n] = score_tokens(loaded[n].model, ref, own_logits=(n == parent_name))
        if parent_name not in model_names:  # the parent only served as the KLD reference: free it
            del loaded[parent_name]
            gc.collect()
        quality = quality_comparison(model_names, nll, kld, agree, reference=model_names[0], block=block)
        quality["parent"] = parent_name
        speed_res = None
        if speed:
            need = max(prefill_tokens, max(batches) * decode_prompt)
            stoks = toks if len(toks) >= need else data.eval_tokens(loaded[model_names[0]].tokenizer, need, text)
            speed_res = sp.interleaved_speed({n: loaded[n].model for n in model_names}, stoks, batches, prefill_tokens,
                                             decode_steps, decode_prompt, min_rounds=rounds, max_rounds=max_rounds,
                                             on_phase=bar.phase)
    models = []
    for n, s in zip(model_names, specs):
        lm = loaded[n]
        models.append({"name": n, "spec": s, "source": str(lm.source), "kind": lm.kind, "load_s": lm.load_s,
                       "bytes_on_disk": _size_on_disk(lm.source), "params": count_params(lm.model),
                       "kernels": kernels_of(lm.model), "lineage": _lineage(lm)})
    result = {"kind": RESULT_KIND, "format": 1, "reference": model_names[0], "parent": parent_name,
              "parent_spec": parent or specs[0], "models": models,
              "settings": {"tokens": tokens, "window": window, "block": block, "n_predicted": int(nll[model_names[0]].size),
                           "corpus": "files: " + ", ".join(text_files) if text_files
                           else "pydoc_data.topics.topics (sorted keys, blank-line joined)",
                           "batches": list(batches), "prefill_tokens": prefill_tokens, "decode_steps": decode_steps,
                           "decode_prompt": decode_prompt, "rounds": rounds, "max_rounds": max_rounds},
              "quality": quality, "speed": speed_res,
              "machine": machine.machine_info(), "command": machine.command_line(),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return result  # the CLI records it (registry/results.compare_records), as every verb's result


# --- output ----------------------------------------------------------------------------------

def _ci(v, lo, hi, spec: str) -> str:
    return f"{format(v, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def print_result(r: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    q = r["quality"]
    st = r["settings"]
    pairs = {p["b"]: p for p in q["pairs"]}
    t = Table(title=f"sizewise compare: quality on the same {st['n_predicted']:,} predicted tokens "
                    f"(reference {q['reference']}, KLD/top-1 vs parent {q['parent']})")
    for c, j in [("model", "left"), ("ppl [95 % CI]", "right"), ("Δppl vs ref [95 % CI]", "right"),
                 ("different?", "left"), ("KLD vs parent", "right"), ("top-1 vs parent", "right")]:
        t.add_column(c, justify=j)
    for m in q["models"]:
        p = pairs.get(m["name"])
        diff = "(reference)" if p is None else \
            f"{p['ppl_change_pct']:+.2f} % [{p['ppl_change_pct_lo']:+.2f}, {p['ppl_change_pct_hi']:+.2f}]"
        yes = "" if p is None else ("yes (95 %)" if p["distinguishable"] else "no: within noise")
        t.add_row(m["name"], _ci(m["ppl"], m["ppl_lo"], m["ppl_hi"], ".3f"), diff, yes,
                  f"{m['kld']:.4f}", f"{100 * m['top1']:.1f} %")
    t.caption = (f"paired per-token NLL differences, block bootstrap ({q['block']}-token blocks, "
                 f"{q['n_boot']} resamples); corpus {st['corpus']}")
    console.print(t)
    sp = r.get("speed")
    if sp:
        s = Table(title=f"speed: interleaved in this process, {sp['rounds']} rounds after {sp['warmup']} warm-up "
                        f"(x = times faster than {sp['reference']}, 95 % CI)")
        metrics = list(sp["ratios"])
        s.add_column("model")
        for m in metrics:
            label = "prefill" if m == "prefill" else f"decode b{m[len('decode_b'):]}"
            s.add_column(f"{label} tok/s", justify="right")
            s.add_column(f"{label} x", justify="right")
        for n, ms in sp["models"].items():
            cells = []
            for m in metrics:
                rate = ms["prefill_tok_s"] if m == "prefill" else ms["decode_tok_s"][m[len("decode_b"):]]
                cells += [f"{rate:.1f}", "1.00x (ref)" if n == sp["reference"] else sp["verdicts"][m][n]["cell"]]
            s.add_row(n, *cells)
        s.caption = f"machine during the run: {sp['load_text']}"
        console.print(s)
        flagged = sorted({reason for v in sp["verdicts"].values() for x in v.values()
                          if x["status"] in ("busy", "noisy") for reason in x["reasons"]})
        for reason in flagged:
            console.print(f"[yellow]warning:[/] speed ratios not trustworthy: {reason}")
    for p in q["pairs"]:
        console.print(p["verdict"])


def compare_command(models: list[str], parent: str | None = None, text: list[str] | None = None,
                    tokens: int = 4096, window: int = 512, block: int = 32, no_speed: bool = False,
                    batches: str = "1", decode_steps: int = 16, prefill_tokens: int = 512, rounds: int = 4,
                    max_rounds: int = 10, json_out: bool = False, out: str | None = None, dtype: str = "auto") -> dict:
    import json

    try:
        bs = tuple(int(x) for x in batches.split(",") if x.strip())
    except ValueError:
        raise SizewiseError(f"--batches must be comma-separated integers, got {batches!r}") from None
    if not bs or min(bs) < 1:
        raise SizewiseError(f"--batches must list batch sizes of at least 1, got {batches!r}")
    if out and Path(out).is_dir():
        raise SizewiseError(f"--out {out} is a directory: give a file name for the JSON result")
    r = compare_models(models, parent, text, tokens, window, block, speed=not no_speed, batches=bs,
                       prefill_tokens=prefill_tokens, decode_steps=decode_steps, rounds=rounds,
                       max_rounds=max_rounds, dtype=dtype, progress=not json_out)
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
