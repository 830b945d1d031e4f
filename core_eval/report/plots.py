"""Figures as PNG bytes (matplotlib's Agg canvas; pyplot and its global state are not used).

Readable by construction: every figure is at least :data:`MIN_WIDTH_PX` wide, all text is at least
:data:`MIN_FONT_PT`, labels are wrapped, never cut, and each selection rule has one colour
(:data:`RULE_COLOURS`) whatever the order of the runs; variants differ by line style and marker.
Each ``*_figure`` function returns the :class:`~matplotlib.figure.Figure` (for tests and your own
edits); the ``*_plot`` functions return its PNG bytes.
"""

from __future__ import annotations

import io
import math
import textwrap
import zlib

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core_eval.report.run import CONTROL_RULES, short_model

MAX_PANELS = 24
DPI = 100
MIN_WIDTH_PX = 800
MIN_FONT_PT = 10
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 12}
RULE_COLOURS = {"top": "#d62728", "bottom": "#2ca02c", "random": "#1f77b4", "layer_matched_random": "#9467bd",
                "explicit": "#ff7f0e", "spec": "#8c564b", "threshold": "#e377c2", "baseline": "#7f7f7f",
                "unknown": "#7f7f7f"}
_SPARE = ("#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39")
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def rule_colour(rule: str) -> str:
    """One colour per selection rule, stable across reports (unknown rules hash to a spare colour)."""
    return RULE_COLOURS.get(rule) or _SPARE[zlib.crc32(str(rule).encode()) % len(_SPARE)]


def _variant_style(variant: str, variants: list[str]) -> tuple[str, str]:
    i = sorted(set(map(str, variants))).index(str(variant))
    return _STYLES[i % len(_STYLES)], _MARKERS[i % len(_MARKERS)]


def wrap(text: str, width: int = 34) -> str:
    """Wrap a label onto several lines (never cut)."""
    return "\n".join(textwrap.wrap(str(text), width, break_long_words=False, break_on_hyphens=False)) or str(text)


def new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(max(width_in, MIN_WIDTH_PX / DPI), height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, w: float = 5.2, h: float = 3.9) -> tuple[Figure, list]:
    n = max(1, min(n, MAX_PANELS))
    cols = min(2, n)
    rows = math.ceil(n / cols)
    fig = new_figure(w * cols, h * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def png(fig: Figure) -> bytes:
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


def deltas_figure(comparison: pd.DataFrame) -> Figure | None:
    """Forest plot: delta vs baseline with its CI, one panel per (model, task)."""
    c = comparison[~comparison.is_group.astype(bool)] if len(comparison) else comparison
    if c.empty:
        return None
    with rc_context(STYLE):
        panels = list(c.groupby(["model", "task", "metric"], sort=True))
        most = c.groupby(["model", "task", "metric"]).size().max()
        fig, axes = _grid(len(panels), w=7.5, h=max(3.0, 1.2 + 0.62 * most))
        for ax, ((model, task, metric), g) in zip(axes, panels):
            g = g.sort_values("label", kind="stable")
            y = np.arange(len(g))[::-1]
            colours = [rule_colour(r) for r in g.rule]
            ax.errorbar(g.delta, y, xerr=_err(g.ci_low, g.ci_high, g.delta), fmt="none", ecolor="#555", capsize=3)
            ax.scatter(g.delta, y, c=colours, zorder=3)
            ax.axvline(0, color="#999", lw=1, ls="--")
            ax.set_yticks(y, [wrap(x, 40) for x in g.label])
            ax.set_xlabel(f"Δ {metric} vs baseline")
            ax.set_title(_title(model, task, metric))
    return fig


def curves_figure(curves: pd.DataFrame) -> Figure | None:
    """Score vs fraction (or number) of heads ablated, one line per (variant, rule); one marker and one
    interval per size (seeds pooled in :func:`~core_eval.report.tables.curves_table`)."""
    if curves.empty:
        return None
    with rc_context(STYLE):
        panels = list(curves.groupby(["model", "task", "metric"], sort=True))
        fig, axes = _grid(len(panels))
        for ax, ((model, task, metric), g) in zip(axes, panels):
            use_frac = g.frac_heads.notna().all()
            xcol = "frac_heads" if use_frac else "n_heads"
            scale = 100 if use_frac else 1
            variants = list(g.variant)
            for (variant, rule), line in sorted(g.groupby(["variant", "rule"], sort=False),
                                                key=lambda kv: (str(kv[0][0]), CONTROL_RULES.index(kv[0][1])
                                                                if kv[0][1] in CONTROL_RULES else 99, str(kv[0][1]))):
                line = line.groupby(xcol, sort=True, as_index=False).first()
                ls, marker = _variant_style(variant, variants)
                colour = rule_colour(rule)
                x = line[xcol].to_numpy(float) * scale
                ax.plot(x, line.score, ls=ls, marker=marker, color=colour, label=f"{rule} ({variant})")
                pts = line[line.n_heads > 0]
                base = line[line.n_heads == 0]
                b = float(base.score.iloc[0]) if len(base) else np.nan
                lo, hi = b + pts.ci_low.to_numpy(float), b + pts.ci_high.to_numpy(float)
                ax.errorbar(pts[xcol].to_numpy(float) * scale, pts.score, yerr=_err(lo, hi, pts.score), fmt="none",
                            ecolor=colour, capsize=3, alpha=0.8)
            ax.set_xlabel("heads ablated (% of all LM heads)" if use_frac else "heads ablated")
            ax.set_ylabel(metric)
            ax.set_title(_title(model, task, metric))
            ax.legend()
    return fig


def causal_figure(causal: pd.DataFrame) -> Figure | None:
    """Bars of the pooled delta (with its CI) per selection rule, one panel per (model, task, variant, size)."""
    if causal.empty:
        return None
    with rc_context(STYLE):
        panels = list(causal.groupby(["model", "task", "metric", "variant", "n_heads"], sort=True))
        fig, axes = _grid(len(panels))
        for ax, ((model, task, metric, variant, n), g) in zip(axes, panels):
            g = g.set_index("rule")
            g = g.loc[[r for r in CONTROL_RULES if r in g.index]]
            x = np.arange(len(g))
            ax.bar(x, g.delta, color=[rule_colour(r) for r in g.index], yerr=_err(g.ci_low, g.ci_high, g.delta),
                   capsize=4)
            ax.axhline(0, color="#999", lw=1)
            names = [r.replace("layer_matched_random", "layer-matched\nrandom") for r in g.index]
            names = [f"{nm}\n({int(k)} seeds)" if k > 1 else nm for nm, k in zip(names, g.n_runs)]
            ax.set_xticks(x, names)
            ax.set_ylabel(f"Δ {metric}")
            ax.set_title(f"{_title(model, task, metric)} · {variant}, {int(n)} heads")
    return fig


def speed_figure(speed: pd.DataFrame) -> Figure | None:
    """Score vs measured speedup, one panel per (model, task); the baseline sits at 1.0."""
    if speed is None or speed.empty:
        return None
    with rc_context(STYLE):
        panels = list(speed.groupby(["model", "task", "metric"], sort=True))
        fig, axes = _grid(len(panels), w=6.5, h=4.6)
        for ax, ((model, task, metric), g) in zip(axes, panels):
            g = g.sort_values("speedup")
            ax.plot(g.speedup, g.score, "o", color="#1f77b4")
            for r in g.itertuples():
                ax.annotate(wrap(r.label, 28), (r.speedup, r.score), fontsize=MIN_FONT_PT, xytext=(3, 3),
                            textcoords="offset points")
            ax.axvline(1.0, color="#999", lw=1, ls="--")
            ax.set_xlabel("speedup vs baseline (×)")
            ax.set_ylabel(metric)
            ax.set_title(_title(model, task, metric))
    return fig


def _as_png(fn):
    def plot(df):
        fig = fn(df)
        return png(fig) if fig is not None else None

    plot.__name__ = fn.__name__.replace("_figure", "_plot")
    plot.__doc__ = f"PNG bytes of :func:`{fn.__name__}` (None when there is nothing to draw)."
    return plot


deltas_plot = _as_png(deltas_figure)
curves_plot = _as_png(curves_figure)
causal_plot = _as_png(causal_figure)
speed_plot = _as_png(speed_figure)
