"""Figures as PNG bytes (matplotlib's Agg canvas; pyplot and its global state are not used)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core_eval.report.run import CONTROL_RULES, short_model

MAX_PANELS = 24
_COLORS = {"top": "#d62728", "bottom": "#2ca02c", "random": "#1f77b4", "layer_matched_random": "#9467bd"}
_OTHER = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _grid(n: int, w: float = 4.4, h: float = 3.3) -> tuple[Figure, list]:
    n = max(1, min(n, MAX_PANELS))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(w * cols, h * rows), dpi=96, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _err(lo, hi, center):
    lo = np.asarray(lo, float)
    hi = np.asarray(hi, float)
    c = np.asarray(center, float)
    return np.nan_to_num(np.vstack([c - lo, hi - c]), nan=0.0).clip(min=0)


def _title(model, task, metric) -> str:
    return f"{short_model(model)}\n{task} ({metric})"


def deltas_plot(comparison: pd.DataFrame) -> bytes | None:
    """Forest plot: delta vs baseline with its CI, one panel per (model, task)."""
    c = comparison[~comparison.is_group] if len(comparison) else comparison
    if c.empty:
        return None
    panels = list(c.groupby(["model", "task", "metric"], sort=True))
    fig, axes = _grid(len(panels), h=max(2.4, 0.9 + 0.32 * c.groupby(["model", "task", "metric"]).size().max()))
    for ax, ((model, task, metric), g) in zip(axes, panels):
        y = np.arange(len(g))[::-1]
        ax.errorbar(g.delta, y, xerr=_err(g.ci_low, g.ci_high, g.delta), fmt="o", color="#333", capsize=3)
        ax.axvline(0, color="#999", lw=1, ls="--")
        ax.set_yticks(y, [str(x)[:38] for x in g.label], fontsize=8)
        ax.set_xlabel(f"Δ {metric} vs baseline")
        ax.set_title(_title(model, task, metric), fontsize=9)
    return _png(fig)


def curves_plot(curves: pd.DataFrame) -> bytes | None:
    """Score vs fraction (or number) of heads ablated, one line per (variant, rule)."""
    if curves.empty:
        return None
    panels = list(curves.groupby(["model", "task", "metric"], sort=True))
    fig, axes = _grid(len(panels))
    for ax, ((model, task, metric), g) in zip(axes, panels):
        use_frac = g.frac_heads.notna().all()
        xcol = "frac_heads" if use_frac else "n_heads"
        for i, ((variant, rule), line) in enumerate(g.groupby(["variant", "rule"], sort=False)):
            line = line.sort_values(xcol)
            mean = line.groupby(xcol, sort=True)["score"].mean()
            x = mean.index.to_numpy(float) * (100 if use_frac else 1)
            color = _COLORS.get(rule) if variant == g.variant.iloc[0] else None
            color = color or _OTHER[i % len(_OTHER)]
            ax.plot(x, mean.values, marker="o", label=f"{rule} ({variant})", color=color)
            pts = line[line.n_heads > 0]
            base = line[line.n_heads == 0]
            b = float(base.score.iloc[0]) if len(base) else np.nan
            lo, hi = b + pts.ci_low.to_numpy(float), b + pts.ci_high.to_numpy(float)
            ax.errorbar(pts[xcol].to_numpy(float) * (100 if use_frac else 1), pts.score,
                        yerr=_err(lo, hi, pts.score), fmt="none", ecolor=color, capsize=2, alpha=0.7)
        ax.set_xlabel("heads ablated (% of all LM heads)" if use_frac else "heads ablated")
        ax.set_ylabel(metric)
        ax.set_title(_title(model, task, metric), fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


def causal_plot(causal: pd.DataFrame) -> bytes | None:
    """Bars of delta (with CI) per selection rule, one panel per (model, task, variant, size)."""
    if causal.empty:
        return None
    panels = list(causal.groupby(["model", "task", "metric", "variant", "n_heads"], sort=True))
    fig, axes = _grid(len(panels))
    for ax, ((model, task, metric, variant, n), g) in zip(axes, panels):
        g = g.groupby("rule", sort=False).agg(delta=("delta", "mean"), ci_low=("ci_low", "mean"),
                                              ci_high=("ci_high", "mean"))
        g = g.loc[[r for r in CONTROL_RULES if r in g.index]]
        x = np.arange(len(g))
        ax.bar(x, g.delta, color=[_COLORS[r] for r in g.index], yerr=_err(g.ci_low, g.ci_high, g.delta), capsize=3)
        ax.axhline(0, color="#999", lw=1)
        ax.set_xticks(x, [r.replace("layer_matched_random", "layer-m.\nrandom") for r in g.index], fontsize=8)
        ax.set_ylabel(f"Δ {metric}")
        ax.set_title(f"{_title(model, task, metric)} · {variant}, {n} heads", fontsize=9)
    return _png(fig)


def speed_plot(speed: pd.DataFrame) -> bytes | None:
    """Score vs measured speedup, one panel per (model, task); the baseline sits at 1.0."""
    if speed is None or speed.empty:
        return None
    panels = list(speed.groupby(["model", "task", "metric"], sort=True))
    fig, axes = _grid(len(panels))
    for ax, ((model, task, metric), g) in zip(axes, panels):
        g = g.sort_values("speedup")
        ax.plot(g.speedup, g.score, "o", color="#1f77b4")
        for r in g.itertuples():
            ax.annotate(str(r.label)[:30], (r.speedup, r.score), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.axvline(1.0, color="#999", lw=1, ls="--")
        ax.set_xlabel("speedup vs baseline (×)")
        ax.set_ylabel(metric)
        ax.set_title(_title(model, task, metric), fontsize=9)
    return _png(fig)
