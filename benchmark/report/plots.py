"""The page's figures as PNG bytes: the robustness/accuracy trade-off and the extra plots.

Every figure is a `matplotlib.figure.Figure` with an explicit Agg canvas, so rendering
touches no global pyplot state or backend setting.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.report.formatting import printable, threat_label
from benchmark.report.tables import LeaderboardTables
from benchmark.store.cell import Cell

# Beyond these a plot is unreadable and slow to draw (a leaderboard of thousands of cells):
# every point is drawn, but only this many names, and this many gain-vs-budget lines.
MAX_LABELS = 40
MAX_SERIES = 20


def tradeoff_png(tables: LeaderboardTables) -> bytes:
    """Worst-case absolute gain vs clean SROCC per model: robustness bought with accuracy shows.

    Names are drawn with mathtext parsing off; with more than `MAX_LABELS` points only the
    largest gains are named.
    """
    fig = _figure(7.5, 4.8, dpi=110)
    ax = fig.add_subplot()
    markers = "os^Dv<>pPX*h"
    plotted = skipped = 0
    groups = tables.threat_groups()
    effects = sorted(
        (e for _, g in groups for e in g["effect"].astype(float) if np.isfinite(e)), reverse=True
    )
    named_from = effects[MAX_LABELS - 1] if len(effects) > MAX_LABELS else -np.inf
    for i, ((dataset, norm, _eps, direction), group) in enumerate(groups):
        ok = group[
            np.isfinite(group["srocc_clean"].astype(float))
            & np.isfinite(group["effect"].astype(float))
        ]
        skipped += len(group) - len(ok)
        if ok.empty:
            continue
        label = f"{dataset} | {threat_label(norm, group['eps_label'].iloc[0])} | {direction}"
        ax.scatter(
            ok["srocc_clean"].astype(float),
            ok["effect"].astype(float),
            marker=markers[i % len(markers)],
            label=label.replace("$", r"\$"),
        )
        for _, r in ok[ok["effect"].astype(float) >= named_from].iterrows():
            ax.annotate(
                printable(r["model"], 28),
                (float(r["srocc_clean"]), float(r["effect"])),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                parse_math=False,
            )
        plotted += len(ok)
    ax.set_xlabel("clean SROCC (higher = more accurate)")
    ax.set_ylabel("worst-case gain in attacked direction\n(lower = more robust)")
    ax.set_title("Robustness / accuracy trade-off")
    ax.grid(True, alpha=0.3)
    if plotted:  # "best" placement costs O(points)
        ax.legend(fontsize=7, loc="best" if plotted <= 200 else "upper right")
    else:
        ax.text(
            0.5,
            0.5,
            "no ranked model with clean SROCC",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    foot = []
    if skipped:
        foot.append(f"{skipped} ranked row(s) without clean SROCC not shown")
    if len(effects) > MAX_LABELS:
        foot.append(f"names of the {MAX_LABELS} largest gains of {len(effects)} shown")
    if foot:
        fig.text(0.01, 0.01, "; ".join(foot), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float, dpi: int = 100) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def extra_plots(tables: LeaderboardTables, cells: Sequence[Cell]) -> list[tuple[str, bytes]]:
    """Gain vs eps per model, and clean vs attacked score distributions of the worst attack."""
    plots: list[tuple[str, bytes]] = []
    ranked = tables.ranked
    if not ranked.empty and ranked["eps"].nunique() > 1:
        fig = _figure(7.5, 4.5)
        ax = fig.add_subplot()
        series = list(ranked.groupby(["model", "norm", "direction"]))
        title = "Gain vs budget"
        if len(series) > MAX_SERIES:  # the most attackable ones
            series.sort(key=lambda kg: -float(np.nanmax(kg[1]["abs_gain"].astype(float))))
            title += f" ({MAX_SERIES} of {len(series)} models: the largest gains)"
            series = series[:MAX_SERIES]
        for (model, norm, direction), g in series:
            g = g.sort_values("eps")
            ax.plot(
                g["eps"] * 255, g["abs_gain"], marker="o", label=f"{model} ({norm}, {direction})"
            )
        ax.set_xlabel("eps (x/255)")
        ax.set_ylabel("worst-case absolute gain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        plots.append((title, _png(fig)))
    by_key = {(k.model, k.dataset, k.attack, round(k.eps, 9), k.direction): c
              for c in cells for k in [c.key]}  # fmt: skip
    worst = []
    for r in ranked[["model", "dataset", "worst_attack", "eps", "direction"]].itertuples(
        index=False
    ):
        cell = by_key.get((r.model, r.dataset, r.worst_attack, round(r.eps, 9), r.direction))
        if cell is not None:
            worst.append(cell)
        if len(worst) == 12:
            break
    examples = [c.load() for c in cells if c.has_example and c.status == "done"][:16]
    if examples:
        cols = min(4, len(examples))
        nrows = math.ceil(len(examples) / cols)
        fig = _figure(2.6 * cols, 2.8 * nrows)
        for i, cell in enumerate(examples):
            ax = fig.add_subplot(nrows, cols, i + 1)
            ax.imshow(cell.example_delta)
            ax.set_title(
                f"{cell.key.attack} on {cell.key.model[:20]}\n{cell.key.eps_label}", fontsize=8
            )
            ax.axis("off")
        fig.tight_layout()
        plots.append(
            ("Learned perturbations (trained attacks; grey = 0, full colour = +-eps)", _png(fig))
        )
    worst = [c.load() for c in worst]
    if worst:
        cols = min(4, len(worst))
        nrows = math.ceil(len(worst) / cols)
        fig = _figure(3.2 * cols, 2.4 * nrows)
        for i, cell in enumerate(worst):
            ax = fig.add_subplot(nrows, cols, i + 1)
            clean = cell.clean[np.isfinite(cell.clean)]
            adv = cell.attacked[np.isfinite(cell.attacked)]
            bins = np.histogram_bin_edges(np.concatenate([clean, adv]), bins=20)
            ax.hist(clean, bins=bins, alpha=0.6, label="clean")
            ax.hist(adv, bins=bins, alpha=0.6, label="attacked")
            ax.set_title(
                f"{cell.key.model[:24]}\n{cell.key.attack} {cell.key.eps_label}", fontsize=8
            )
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.legend(fontsize=7)
        fig.tight_layout()
        plots.append(("Score distributions, clean vs attacked (worst attack)", _png(fig)))
    return plots
