"""From a verb's JSON result to registry records: which model, which parent, which numbers.

Why here and not in the verbs: the registry consumes results and never calls back into the verbs
(DESIGN.md); each verb's CLI function hands its result dict to `record_result` and is done. A
failure to record never costs the verb its output or its exit status: one warning line instead.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

CORPUS = "pydoc_data.topics.topics (sorted keys)"


def _quality(q: dict | None, protocol: dict) -> dict:
    """ppl/kld/top1 (+ nll, kld_max) of a metrics.Quality dict, each with its token count."""
    if not q:
        return {}
    tokens = q.get("n_predicted") or q.get("tokens")
    out = {}
    for k in ("ppl", "nll", "kld", "kld_max", "top1"):
        if q.get(k) is not None:
            out[k] = {"value": q[k], "tokens": tokens, "protocol": protocol}
    return out


def _speed(s: dict | None, protocol: dict) -> dict:
    if not s:
        return {}
    out = {"prefill_tok_s": {"value": s.get("prefill_tok_s"), "tokens": s.get("prefill_tokens"), "protocol": protocol}}
    for b, v in (s.get("decode_tok_s") or {}).items():
        out[f"decode_tok_s.b{b}"] = {"value": v, "protocol": protocol}
    return out


def _params_total(r: dict) -> Optional[int]:
    p = r.get("params")
    return p.get("total") if isinstance(p, dict) else (p if isinstance(p, int) else r.get("parameters"))


def eval_records(r: dict) -> list[dict]:
    qp = {"corpus": r.get("corpus") or CORPUS, "window": (r.get("quality") or {}).get("window"),
          "against": r.get("against"), "dtype": r.get("activation_dtype")}
    sp = {"what": "median of 3 after a warm-up", **{k: v for k, v in (r.get("speed") or {}).items()
                                                    if k in ("prefill_tokens", "decode_steps", "runs", "decoder")}}
    m: dict[str, Any] = {**_quality(r.get("quality"), qp), **_speed(r.get("speed"), sp),
                         "load_s": r.get("load_s"), "bytes_on_disk": r.get("bytes_on_disk"),
                         "params.total": _params_total(r), "peak_rss_bytes": r.get("peak_rss_bytes")}
    recs = [{"model": r["model"], "metrics": m, "protocol": qp,
             "extra": {"kernels": r.get("kernels"), "machine": r.get("machine"), "command": r.get("command")}}]
    if r.get("against") and r.get("parent"):  # the parent was measured too: its perplexity is its own metric
        recs.append({"model": r["against"], "metrics": _quality(r["parent"].get("quality"), {**qp, "against": None}),
                     "protocol": qp, "extra": {"role": "reference of an eval --against", "machine": r.get("machine"),
                                               "command": r.get("command")}})
    return recs


def compress_records(s: dict, model: str, prune: bool) -> list[dict]:
    m = {"bytes_on_disk": s.get("bytes_on_disk"), "tensor_data_bytes": s.get("tensor_data_bytes"),
         "seconds": s.get("seconds")}
    extra = {"schemes": s.get("schemes"), "kernels": s.get("kernels"), "streamed": s.get("streamed")}
    try:
        import json
        man = json.loads((Path(s["out"]) / "sizewise.json").read_text())
    except (OSError, ValueError, KeyError):
        man = {}
    recipe = None
    if man:
        base = man.get("recipe_name") or (s.get("recipe") if isinstance(s.get("recipe"), str) else None)
        recipe = {"name": base, **(man.get("recipe") or {})}
    if man.get("prune"):
        pr = man["prune"]
        m["sparsity"] = pr.get("measured_sparsity")
        extra["prune"] = {k: v for k, v in pr.items() if k not in ("log",)}
        recipe = {**(recipe or {}), "name": f"{pr.get('method')}-{pr.get('sparsity')}+{(recipe or {}).get('name')}",
                  "prune": extra["prune"]}
    return [{"model": s["out"], "parent": model, "recipe": recipe, "metrics": m, "extra": extra,
             "artifacts": [s["out"]]}]


def share_records(rec: dict, model: str, out: str) -> list[dict]:
    q = rec.get("quality") or {}
    proto = {"corpus": CORPUS, "tokens": q.get("tokens", q.get("eval_tokens")), "against": model}
    m = {"bytes_on_disk": rec.get("bytes_on_disk"), "mean_relative_l2_error": rec.get("mean_relative_l2_error")}
    for k in ("ppl", "kld", "top1"):
        m[k] = q.get(k, q.get("top1_agreement") if k == "top1" else None)
    recipe = {"name": "share", **{k: rec.get(k) for k in ("group_size", "projections", "steps")}}
    recs = [{"model": out, "parent": model, "recipe": recipe, "metrics": m, "protocol": proto, "artifacts": [out]}]
    if q.get("ppl_dense") is not None:
        recs.append({"model": model, "metrics": {"ppl": q["ppl_dense"]}, "protocol": {**proto, "against": None}})
    return recs


def export_records(r: dict, src: str, out: str) -> list[dict]:
    proto = {"corpus": CORPUS, "tokens": r.get("measure_tokens"), "against": src} if r.get("kld_vs_src") is not None else None
    m = {"bytes_on_disk": r.get("bytes_on_disk", r.get("bytes")), "kld": r.get("kld", r.get("kld_vs_src"))}
    recipe = {"name": f"export-{r.get('target')}", "target": r.get("target"), "type": r.get("type")}
    return [{"model": out, "parent": src, "recipe": recipe, "metrics": m, "protocol": proto, "artifacts": [out],
             "extra": {"requantized": len(r.get("requantized") or []), "exact": len(r.get("exact") or [])}}]


def study_records(st: dict, model: str, out_dir: str, keep: bool) -> list[dict]:
    settings = st.get("settings") or {}
    qp = {"corpus": settings.get("corpus") or CORPUS, "window": settings.get("window"), "study": str(out_dir)}
    base = {"machine": st.get("machine"), "command": st.get("command")}
    par = st.get("parent") or {}
    recs = [{"model": model, "metrics": {**_quality(par.get("quality"), qp), "load_s": par.get("load_s"),
                                         "params.total": _params_total(par)},
             "protocol": qp, "artifacts": [str(Path(out_dir) / "study.json")], "extra": dict(base)}]
    for row in st.get("recipes") or []:
        d = Path(out_dir) / "variants" / row["recipe"]
        if not keep or not d.is_dir():
            continue  # variants not kept have no files, hence no content hash: study.json holds their numbers
        m = {**_quality(row.get("quality"), qp), **_speed(row.get("speed"), {"what": "median after a warm-up"}),
             "bytes_on_disk": row.get("bytes_on_disk", row.get("bytes")), "load_s": row.get("load_s")}
        recs.append({"model": str(d), "parent": model, "metrics": m, "protocol": qp, "extra": dict(base),
                     "artifacts": [str(d)]})
    return recs


def compare_records(r: dict, out: str | None = None) -> list[dict]:
    """One record per compared model: its perplexity, KLD and top-1 against the common parent with their
    block-bootstrap intervals, the paired NLL difference against the reference, and the interleaved speed
    ratios; every record carries the whole compare result (`extra.compare`) so that `sizewise report ID`
    renders it from the registry alone (docs/compare-and-report.md)."""
    q = r.get("quality") or {}
    st = r.get("settings") or {}
    proto = {"corpus": st.get("corpus") or CORPUS, "window": st.get("window"), "block": st.get("block"),
             "parent": r.get("parent_spec"), "reference": r.get("reference"), "verb": "compare"}
    tokens = st.get("n_predicted")
    summary = {m["name"]: m for m in q.get("models") or []}
    pairs = {p["b"]: p for p in q.get("pairs") or []}
    sp = r.get("speed") or {}
    spec_of = {m["name"]: m["spec"] for m in r.get("models") or []}
    recs = []
    for m in r.get("models") or []:
        n = m["name"]
        s = summary.get(n, {})
        metrics: dict[str, Any] = {}
        for k in ("ppl", "ppl_lo", "ppl_hi", "nll", "kld", "kld_lo", "kld_hi", "top1", "top1_lo", "top1_hi"):
            if s.get(k) is not None:
                metrics[k] = {"value": s[k], "tokens": tokens, "protocol": proto}
        p = pairs.get(n)
        if p:
            for k, v in (("compare.nll_diff", p["nll_diff"]["mean"]), ("compare.nll_diff_lo", p["nll_diff"]["lo"]),
                         ("compare.nll_diff_hi", p["nll_diff"]["hi"]), ("compare.ppl_change_pct", p["ppl_change_pct"])):
                metrics[k] = {"value": v, "tokens": tokens, "protocol": proto}
        for metric, by in (sp.get("ratios") or {}).items():
            if n in by and n != sp.get("reference"):
                rt = by[n]
                for k in ("estimate", "lo", "hi"):
                    if isinstance(rt.get(k), (int, float)):
                        metrics[f"compare.speedup.{metric}{'' if k == 'estimate' else '_' + k}"] = {
                            "value": rt[k], "protocol": {**proto, "vs": sp.get("reference")}}
        recs.append({"model": spec_of.get(n, m.get("source")), "metrics": metrics, "protocol": proto,
                     "artifacts": [str(out)] if out else None,
                     "extra": {"compare": r, "machine": r.get("machine"), "command": r.get("command")}})
    return recs


def bench_serve_records(r: dict, model: str, out: str) -> list[dict]:
    proto = {"workload": {k: v for k, v in (r.get("workload") or {}).items() if k in ("requests", "max_tokens", "seed")},
             "engine": r.get("engine"), "dtype": r.get("dtype"), "recipe": r.get("recipe")}
    m: dict[str, Any] = {}
    for s in r.get("serve") or []:
        c = s.get("concurrency")
        m[f"tokens_per_s.c{c}"] = s.get("tokens_per_s")
        for k in ("ttft_p50_s", "ttft_p95_s", "latency_p95_s"):
            if isinstance(s.get(k), (int, float)):
                m[f"{k}.c{c}"] = s[k]
    for k in ("baseline_sequential", "baseline_static"):
        if isinstance(r.get(k), dict):
            m[f"{k}.tokens_per_s"] = r[k].get("tokens_per_s")
    return [{"model": model, "metrics": m, "protocol": proto, "artifacts": [out],
             "extra": {"machine": r.get("machine"), "command": r.get("command")}}]


def record_result(verb: str, records: Callable[[], list[dict]], *, enabled: bool = True,
                  registry: str | None = None, warn: Callable[[str], None] | None = None) -> list[str]:
    """Record each of `records()` (dicts of record_run keywords); on any failure print one warning
    line to stderr and return what was recorded so far. Never raises: the verb's work is done."""
    from sizewise.registry.record import record_run

    if not enabled:
        return []
    say = warn or (lambda msg: print(msg, file=sys.stderr))
    ids: list[str] = []
    try:
        for rec in records():
            mid = record_run(verb, registry=registry, **rec)
            if mid:
                ids.append(mid)
    except Exception as e:  # noqa: BLE001 - any failure: the verb's output stands, we only warn
        first = (str(e).splitlines() or [e.__class__.__name__])[0]
        say(f"warning: not recorded in the registry: {first} (the {verb} result above is complete; --no-record skips this)")
    return ids


def serve_ab_records(summary: dict, registry: str | None = None) -> list[dict]:
    """One run per A/B variant (verb serve-ab), each carrying the whole split with every variant's id,
    so any one run tells what it was compared against. An in-memory recipe goes into the protocol,
    not the model's recipe: the registry's recipe says how a model's files were made, and these
    variants have the source's files."""
    from sizewise.registry.store import Registry

    rows = summary.get("variants") or []
    with Registry.open(registry) as reg:
        ids = {v["name"]: reg.identify(v["source"]).id for v in rows}
    split = [{"name": v["name"], "source": v["source"], "recipe": v["recipe"], "share": v["share"], "id": ids[v["name"]]}
             for v in rows]
    recs = []
    for v in rows:
        m: dict[str, Any] = {f"ab.{k}": v.get(k) for k in ("requests", "ok", "errors", "client_errors", "observed_share",
                                                           "tokens_per_s")}
        m["ab.decode_tok_s"] = v.get("decode_tokens_per_s")
        for k in ("latency", "ttft"):
            for q in ("p50", "p95"):
                m[f"ab.{k}_{q}_s"] = (v.get(f"{k}_s") or {}).get(q)
        proto = {"ab": {"variant": v["name"], "share": v["share"], "in_memory_recipe": v["recipe"],
                        "routing": summary.get("routing"), "seed": summary.get("seed")}}
        recs.append({"model": v["source"], "metrics": m, "protocol": proto,
                     "extra": {"ab": {"served_model": summary.get("served_model"), "variants": split,
                                      "uptime_s": summary.get("uptime_s"), "started": summary.get("started"),
                                      "this": v["name"], "numbers": v}}})
    return recs
