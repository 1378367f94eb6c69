"""Study plots: size vs Δppl and decode speed vs Δppl, Pareto front marked. Consumes study JSON only."""
from __future__ import annotations

from pathlib import Path


def _front(points: list[tuple[float, float]]) -> list[int]:
    from sizewise.study import pareto_front
    return pareto_front(points)


def _scatter(rows: list[dict], xs: list[float], ys: list[float], front: list[int], xlabel: str, title: str,
             out: Path, logx: bool = False) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    from sizewise.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter(xs, ys, c=["tab:red" if i in front else "tab:blue" for i in range(len(xs))], zorder=3)
    for i, r in enumerate(rows):
        label = r["recipe"] + (" (source grid)" if r.get("matches_source_grid") else "")
        ax.annotate(label, (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if len(front) > 1:
        pts = sorted((xs[i], ys[i]) for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="tab:red", lw=1, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Δ perplexity vs fp32 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def study_plots(study: dict, out_dir: Path) -> list[Path]:
    """size_vs_ppl.png and speed_vs_ppl.png (decode tok/s at batch 1); rows without a size are left out
    of the size plot."""
    rows = [r for r in study["recipes"] if "ratios" in r]
    if not rows:
        return []
    model = study.get("model", "")
    paths = []
    sized = [r for r in rows if r.get("bytes")]
    if sized:
        xs = [r["bytes"] / 1e6 for r in sized]
        ys = [r["ratios"]["delta_ppl_pct"] for r in sized]
        paths.append(_scatter(sized, xs, ys, _front(list(zip(xs, ys))), "size on disk (MB)",
                              f"{model}: size vs quality (lower-left is better)", out_dir / "size_vs_ppl.png"))
    b = str(study["settings"]["batches"][0])
    xs = [r["speed"]["decode_tok_s"][b] for r in rows]
    ys = [r["ratios"]["delta_ppl_pct"] for r in rows]
    front = _front([(-x, y) for x, y in zip(xs, ys)])  # faster is better: minimize -speed
    paths.append(_scatter(rows, xs, ys, front, f"decode tokens/s at batch {b}",
                          f"{model}: decode speed vs quality (lower-right is better)", out_dir / "speed_vs_ppl.png"))
    return paths
