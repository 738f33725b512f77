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
from benchmark.store.cell import CellResult


def tradeoff_png(tables: LeaderboardTables) -> bytes:
    """Worst-case absolute gain vs clean SROCC per model: robustness bought with accuracy shows.

    Names are drawn with mathtext parsing off.
    """
    fig = _figure(7.5, 4.8, dpi=110)
    ax = fig.add_subplot()
    markers = "os^Dv<>pPX*h"
    plotted = skipped = 0
    for i, ((dataset, norm, _eps, direction), group) in enumerate(tables.threat_groups()):
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
        for _, r in ok.iterrows():
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
    if plotted:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(
            0.5,
            0.5,
            "no ranked model with clean SROCC",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    if skipped:
        fig.text(0.01, 0.01, f"{skipped} ranked row(s) without clean SROCC not shown", fontsize=7)
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


def extra_plots(tables: LeaderboardTables, cells: Sequence[CellResult]) -> list[tuple[str, bytes]]:
    """Gain vs eps per model, and clean vs attacked score distributions of the worst attack."""
    plots: list[tuple[str, bytes]] = []
    ranked = tables.ranked
    if not ranked.empty and ranked["eps"].nunique() > 1:
        fig = _figure(7.5, 4.5)
        ax = fig.add_subplot()
        for (model, norm, direction), g in ranked.groupby(["model", "norm", "direction"]):
            g = g.sort_values("eps")
            ax.plot(
                g["eps"] * 255, g["abs_gain"], marker="o", label=f"{model} ({norm}, {direction})"
            )
        ax.set_xlabel("eps (x/255)")
        ax.set_ylabel("worst-case absolute gain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        plots.append(("Gain vs budget", _png(fig)))
    by_key = {c.key: c for c in cells}
    worst = []
    for _, r in ranked.iterrows():
        key = next(
            (k for k in by_key if k.model == r["model"] and k.dataset == r["dataset"]
             and k.attack == r["worst_attack"] and np.isclose(k.eps, r["eps"])
             and k.direction == r["direction"]),
            None,
        )  # fmt: skip
        if key is not None:
            worst.append(by_key[key])
    examples = [c for c in cells if c.example_delta is not None and c.status == "done"][:16]
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
    worst = worst[:12]
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
