"""Study plots: size vs Δppl and decode speed vs Δppl, Pareto front marked. Consumes study JSON only."""
from __future__ import annotations

from pathlib import Path


def _front(points: list[tuple[float, float]]) -> list[int]:
    from sizewise.study import pareto_front
    return pareto_front(points)


def scatter_figure(rows: list[dict], xs: list[float], ys: list[float], front: list[int], xlabel: str, title: str,
                   logx: bool = False, ylabel: str = "Δ perplexity vs fp32 (%)", label_key: str = "recipe"):
    """The scatter with the Pareto front drawn, as a matplotlib Figure (PNG here, SVG in html.py)."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter(xs, ys, c=["tab:red" if i in front else "tab:blue" for i in range(len(xs))], zorder=3)
    for i, r in enumerate(rows):
        label = r[label_key] + (" (source grid)" if r.get("matches_source_grid") else "")
        ax.annotate(label, (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if len(front) > 1:
        pts = sorted((xs[i], ys[i]) for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="tab:red", lw=1, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _scatter(rows: list[dict], xs: list[float], ys: list[float], front: list[int], xlabel: str, title: str,
             out: Path, logx: bool = False) -> Path:
    import matplotlib.pyplot as plt

    from sizewise.io.atomic import atomic_path

    fig = scatter_figure(rows, xs, ys, front, xlabel, title, logx)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def study_points(study: dict) -> list[dict]:
    """The two plots' data: [{"kind", "rows", "xs", "ys", "front", "xlabel", "title"}], shared by
    the PNGs and the HTML report so both draw the same points and the same front."""
    rows = [r for r in study["recipes"] if "ratios" in r]
    if not rows:
        return []
    model = study.get("model", "")
    out = []
    sized = [r for r in rows if r.get("bytes")]
    if sized:
        xs = [r["bytes"] / 1e6 for r in sized]
        ys = [r["ratios"]["delta_ppl_pct"] for r in sized]
        out.append({"kind": "size", "rows": sized, "xs": xs, "ys": ys, "front": _front(list(zip(xs, ys))),
                    "xlabel": "size on disk (MB)", "title": f"{model}: size vs quality (lower-left is better)"})
    b = str(study["settings"]["batches"][0])
    xs = [r["speed"]["decode_tok_s"][b] for r in rows]
    ys = [r["ratios"]["delta_ppl_pct"] for r in rows]
    out.append({"kind": "speed", "rows": rows, "xs": xs, "ys": ys, "front": _front([(-x, y) for x, y in zip(xs, ys)]),
                "xlabel": f"decode tokens/s at batch {b}",
                "title": f"{model}: decode speed vs quality (lower-right is better)"})
    return out


def study_plots(study: dict, out_dir: Path) -> list[Path]:
    """size_vs_ppl.png and speed_vs_ppl.png (decode tok/s at batch 1); rows without a size are left out
    of the size plot."""
    names = {"size": "size_vs_ppl.png", "speed": "speed_vs_ppl.png"}
    return [_scatter(p["rows"], p["xs"], p["ys"], p["front"], p["xlabel"], p["title"], out_dir / names[p["kind"]])
            for p in study_points(study)]
