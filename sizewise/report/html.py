"""Result JSON -> one self-contained HTML page (inline CSS, inline SVG plots, no script, no fetch).

Why self-contained: a report is mailed, attached to an issue or opened on a machine with no
network; a page that loads a plotting library from a CDN shows nothing there. matplotlib's SVG
output draws text as paths, so the page depends on no font either.

Consumes study.json (`sizewise study`) or a compare result (`sizewise compare --out`); never
calls back into the verbs. What a study table may print as a speedup is decided by the same
helpers study.md uses (`study.speed_cell`), so the page and the markdown cannot disagree.
"""
from __future__ import annotations

import html
import io
import math
import re

from sizewise.errors import SizewiseError

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px} th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f3f7} td:first-child,th:first-child{text-align:left} tr:nth-child(even) td{background:#fafbfc}
td.warn{background:#fff0e0 !important;color:#8a3b00} td.ok{color:#175e17} .note{color:#555;font-size:12.5px}
.warning{background:#fff0e0;border-left:4px solid #e08000;padding:.4em .8em;margin:.4em 0}
.front{font-weight:600;color:#b00} figure{display:inline-block;margin:.5em 1em .5em 0} figure svg{max-width:560px;height:auto}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px} ul.lineage{font-family:monospace;font-size:12.5px}
"""

_e = html.escape


def _fmt(v, spec: str, none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return none
    return format(v, spec)


def _table(tid: str, head: list[str], rows: list[list], classes: list[list[str]] | None = None) -> str:
    out = [f'<table id="{tid}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = classes[i] if classes else [""] * len(r)
        out.append("<tr>" + "".join(f'<td class="{c}">{_e(str(v))}</td>' if c else f"<td>{_e(str(v))}</td>"
                                    for v, c in zip(r, cls)) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _cell_class(cell: str) -> str:
    return "warn" if ("busy!" in cell or "noisy!" in cell or cell.startswith("≈1")) else ""


def svg_of(fig) -> str:
    """A matplotlib figure as inline <svg> (XML prolog and DOCTYPE dropped, ids made unique)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    s = buf.getvalue()
    return s[s.index("<svg"):]


def _plot(fig_id: str, p: dict, ylabel: str, label_key: str, caption: str) -> str:
    import matplotlib
    matplotlib.rcParams["svg.hashsalt"] = fig_id  # deterministic, page-unique clip-path ids

    from sizewise.report.plots import scatter_figure

    fig = scatter_figure(p["rows"], p["xs"], p["ys"], p["front"], p["xlabel"], p["title"], ylabel=ylabel,
                         label_key=label_key)
    svg = svg_of(fig)
    front = ", ".join(p["rows"][i][label_key] for i in sorted(p["front"], key=lambda i: p["xs"][i]))
    return (f'<figure id="{fig_id}">{svg}<figcaption class="note">{_e(caption)} Pareto front (red, dashed): '
            f'<span class="front">{_e(front)}</span>.</figcaption></figure>')


def _machine(machine: dict, command: str, extra: list[str] | None = None) -> str:
    items = [f"<li>{_e(k)}: <code>{_e(str(v))}</code></li>" for k, v in machine.items()]
    items += [f"<li>{_e(x)}</li>" for x in extra or []]
    return (f'<h2>Machine and command</h2><ul id="machine">{"".join(items)}</ul>'
            f'<p>Command: <code id="command">{_e(command)}</code></p>')


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{_e(title)}</title><style>{CSS}</style>'
            f'</head><body>{body}<p class="note">Written by sizewise; self-contained (no scripts, no network).'
            f'</p></body></html>\n')


# --- study -----------------------------------------------------------------------------------

def render_study(study: dict) -> str:
    from sizewise.report.plots import study_points
    from sizewise.study import claims_rows, pareto_front, speed_cell, timing_notes

    rows = study["recipes"]
    st, p = study["settings"], study["parent"]
    batches = [str(b) for b in st["batches"]]
    has_ratios = bool(rows) and all("ratios" in r for r in rows)
    front = {rows[i]["recipe"] for i in pareto_front(
        [(r.get("bytes") or math.inf, r["ratios"]["delta_ppl_pct"]) for r in rows])} if has_ratios else set()
    body = [f"<h1>sizewise study: {_e(study['model'])}</h1>",
            f"<p>Parent: {_e(p['description'])}. {(p['params']['total'] if isinstance(p['params'], dict) else p['params']):,} parameters; perplexity {p['quality']['ppl']:.3f} "
            f"over {p['quality']['n_predicted']:,} predicted tokens (windows of {st['window']}, corpus "
            f"{_e(st['corpus'])}).</p>"]
    notes = timing_notes(study) if has_ratios and any((r.get("speed") or {}).get("interleaved") for r in rows) else []
    for n in notes:
        body.append(f'<p class="{"warning" if n.startswith("⚠") else "note"}">{_e(n)}</p>')

    head = ["recipe", "act dtype", "size MB", "compression", "prefill tok/s", "prefill x"]
    for b in batches:
        head += [f"decode b{b} tok/s", f"decode b{b} x"]
    head += ["ppl", "Δppl %", "KLD", "top-1 %", "kernel"]
    table, classes = [], []
    for r in rows:
        q, sp, ra = r["quality"], r.get("speed") or {}, r.get("ratios", {})
        name = r["recipe"] + (" (source grid)" if r.get("matches_source_grid") else "") + (" ★" if r["recipe"] in front else "")
        kern = sorted(r.get("kernels", {}), key=r["kernels"].get, reverse=True)[:1] if r.get("kernels") else ["-"]
        cells = [name, r.get("activation_dtype", ""), _fmt(r.get("bytes") and r["bytes"] / 1e6, ".1f"),
                 f"{_fmt(ra.get('compression'), '.2f')}x", _fmt(sp.get("prefill_tok_s"), ".0f"), speed_cell(r, "prefill")]
        for b in batches:
            cells += [_fmt((sp.get("decode_tok_s") or {}).get(b), ".1f"), speed_cell(r, b)]
        cells += [_fmt(q.get("ppl"), ".3f"), _fmt(ra.get("delta_ppl_pct"), "+.2f"), _fmt(q.get("kld"), ".4f"),
                  _fmt(q.get("top1") is not None and 100 * q["top1"], ".1f"), kern[0]]
        table.append(cells)
        classes.append([_cell_class(str(c)) if j in [5] + [7 + 2 * k for k in range(len(batches))] else ""
                        for j, c in enumerate(cells)])
    body += ["<h2>Measured</h2>", _table("measured", head, table, classes),
             '<p class="note">★ = on the Pareto front of size vs Δppl. Ratios are against the fp32 parent, paired '
             'round by round in the same run; a cell shows an interval and a flag where the run could not support '
             'a bare ratio.</p>']

    if has_ratios:
        claims = claims_rows(study)
        ct = [[f"{c['precision']} ({c['recipe']})" if c["recipe"] else f"{c['precision']} (not in this run)",
               c["claimed_compression"], c["measured_compression"], c["claimed_speed"], c["measured_speed"],
               c["claimed_quality_loss"], c["measured_quality_loss"]] for c in claims]
        body += ["<h2>Claimed vs measured</h2>",
                 '<p class="note">The commonly quoted table (no model, machine or method given) beside this run; '
                 'size claims about named models are checked in docs/claims.md.</p>',
                 _table("claims", ["precision", "claimed compression", "measured", "claimed speed",
                                   "measured decode b1", "claimed quality loss", "measured Δppl"], ct,
                        [["", "", "", "", _cell_class(r[4]), "", ""] for r in ct])]
        pts = study_points(study)
        body.append("<h2>Plots</h2>")
        for pt in pts:
            cap = ("Size on disk against Δppl: lower-left is better." if pt["kind"] == "size" else
                   "Decode speed (batch %s) against Δppl: lower-right is better; speeds measured on a busy machine "
                   "(see the flags above) move with the load." % batches[0])
            body.append(_plot(f"plot-{pt['kind']}", pt, "Δ perplexity vs fp32 (%)", "recipe", cap))

    lin = [f"<li>{_e(study.get('source', study['model']))} ({_e(study.get('source_kind', ''))}) → fp32 parent</li>"]
    for r in rows:
        cfg = r.get("config") or {}
        desc = ", ".join(f"{k}={v}" for k, v in cfg.items() if v not in (None, "", [], {}))
        lin.append(f"<li>&nbsp;&nbsp;└ {_e(r['recipe'])}: {_e(desc)}</li>")
    body += ["<h2>Lineage</h2>", f'<ul class="lineage" id="lineage">{"".join(lin)}</ul>']
    body.append(_machine(study.get("machine", {}), study.get("command", ""),
                         [f"wall time {study['wall_s']:.0f} s"] if "wall_s" in study else None))
    return _page(f"sizewise study: {study['model']}", "".join(body))


# --- compare ---------------------------------------------------------------------------------

def render_compare(res: dict) -> str:
    from sizewise.study import pareto_front

    q, st = res["quality"], res["settings"]
    pairs = {p["b"]: p for p in q["pairs"]}
    models = {m["name"]: m for m in res["models"]}
    body = [f"<h1>sizewise compare: {_e(', '.join(models))}</h1>",
            f"<p>Reference {_e(q['reference'])}; KLD and top-1 against parent {_e(q['parent'])}; "
            f"{st['n_predicted']:,} predicted tokens, the same for every model (windows of {st['window']}, corpus "
            f"{_e(st['corpus'])}). Differences are paired per token, 95 % block-bootstrap intervals "
            f"({q['block']}-token blocks).</p>"]
    rows, classes = [], []
    for m in q["models"]:
        p = pairs.get(m["name"])
        rows.append([m["name"], f"{m['ppl']:.3f} [{m['ppl_lo']:.3f}, {m['ppl_hi']:.3f}]",
                     "(reference)" if p is None else
                     f"{p['ppl_change_pct']:+.2f} % [{p['ppl_change_pct_lo']:+.2f}, {p['ppl_change_pct_hi']:+.2f}]",
                     "" if p is None else ("yes" if p["distinguishable"] else "no: within noise"),
                     f"{m['kld']:.4f}", f"{100 * m['top1']:.1f} %",
                     _fmt(models[m["name"]].get("bytes_on_disk") and models[m["name"]]["bytes_on_disk"] / 1e6, ".1f")])
        classes.append(["", "", "", "ok" if p and p["distinguishable"] else "", "", "", ""])
    body += ["<h2>Quality</h2>", _table("measured", ["model", "ppl [95 % CI]", "Δppl vs reference [95 % CI]",
                                                     "distinguishable?", "KLD vs parent", "top-1 vs parent",
                                                     "size MB"], rows, classes)]
    body += [f"<p class=\"note\">{_e(p['verdict'])}</p>" for p in q["pairs"]]
    sp = res.get("speed")
    if sp:
        metrics = list(sp["ratios"])
        head = ["model"]
        for m in metrics:
            lab = "prefill" if m == "prefill" else f"decode b{m[len('decode_b'):]}"
            head += [f"{lab} tok/s", f"{lab} x"]
        srows, scls = [], []
        for n, ms in sp["models"].items():
            cells = [n]
            for m in metrics:
                rate = ms["prefill_tok_s"] if m == "prefill" else ms["decode_tok_s"][m[len("decode_b"):]]
                cells += [_fmt(rate, ".1f"), "1.00x (ref)" if n == sp["reference"] else sp["verdicts"][m][n]["cell"]]
            srows.append(cells)
            scls.append([_cell_class(str(c)) if j % 2 == 0 and j else "" for j, c in enumerate(cells)])
        body += ["<h2>Speed</h2>", f'<p class="note">Interleaved in one process: {sp["rounds"]} rounds after '
                 f'{sp["warmup"]} warm-up, alternating order; x = times faster than {_e(sp["reference"])}, 95 % '
                 f'interval. Machine during the run: {_e(sp["load_text"])}.</p>', _table("speed", head, srows, scls)]
        flagged = sorted({r for v in sp["verdicts"].values() for x in v.values() if x["status"] in ("busy", "noisy")
                          for r in x["reasons"]})
        body += [f'<p class="warning">⚠ speed ratios not trustworthy: {_e(r)}</p>' for r in flagged]
    # plots: size vs Δppl and decode speed vs Δppl over the compared models, Pareto front marked
    qm = {m["name"]: m for m in q["models"]}
    ref_ppl = qm[q["reference"]]["ppl"]
    pts_rows = [{"name": n, "d": 100 * (qm[n]["ppl"] / ref_ppl - 1)} for n in models]
    body.append("<h2>Plots</h2>")
    sized = [r for r in pts_rows if models[r["name"]].get("bytes_on_disk")]
    ylabel = f"Δ perplexity vs {q['reference']} (%)"
    if sized:
        xs = [models[r["name"]]["bytes_on_disk"] / 1e6 for r in sized]
        ys = [r["d"] for r in sized]
        body.append(_plot("plot-size", {"rows": sized, "xs": xs, "ys": ys, "front": pareto_front(list(zip(xs, ys))),
                                        "xlabel": "size on disk (MB)", "title": "size vs quality (lower-left is better)"},
                          ylabel, "name", "Size on disk against Δppl."))
    if sp:
        b = next((m for m in sp["ratios"] if m.startswith("decode_b")), None)
        if b:
            xs = [sp["models"][r["name"]]["decode_tok_s"][b[len("decode_b"):]] for r in pts_rows]
            ys = [r["d"] for r in pts_rows]
            body.append(_plot("plot-speed", {"rows": pts_rows, "xs": xs, "ys": ys,
                                             "front": pareto_front([(-x, y) for x, y in zip(xs, ys)]),
                                             "xlabel": f"decode tokens/s (batch {b[len('decode_b'):]})",
                                             "title": "decode speed vs quality (lower-right is better)"},
                              ylabel, "name", "Decode speed against Δppl."))
    lin = []
    for m in res["models"]:
        li = m.get("lineage") or {}
        src = f"{m['spec']} ({m['kind']})"
        if li.get("parent"):
            src += f" ← {li['parent']}" + (f" via {li['recipe']}" if li.get("recipe") else "")
        lin.append(f"<li>{_e(m['name'])}: {_e(src)}</li>")
    body += ["<h2>Lineage</h2>", f'<ul class="lineage" id="lineage">{"".join(lin)}</ul>']
    body.append(_machine(res.get("machine", {}), res.get("command", ""), [f"created {res.get('created', '?')}"]))
    return _page("sizewise compare", "".join(body))


def render(data: dict) -> str:
    """Dispatch on what the JSON is: a compare result or a study."""
    if data.get("kind") == "sizewise.compare":
        return render_compare(data)
    if "recipes" in data and "parent" in data:
        return render_study(data)
    raise SizewiseError("the JSON is neither a study.json nor a compare result: give `sizewise study`'s directory "
                        "or a file written by `sizewise compare --out`")


def is_self_contained(page: str) -> bool:
    """No external fetches: no src=/href= to a URL, no @import, no url(http...)."""
    return not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|@import|url\(\s*["']?https?:""", page)
