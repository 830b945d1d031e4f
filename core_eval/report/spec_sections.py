"""Head-spec sections of a report (``core-eval report --spec S``): RAM heatmap, heads table, RAM vs causal effect.

For each spec: a ``heads`` table (every head: RAM, lift, visual mass, whether it is in the spec's
selection, and the single-head causal effects where ``core-eval causal`` measured them), its RAM
heatmap (selected heads outlined), and, when the spec carries causal effects, a RAM vs causal-effect
scatter with Spearman's rank correlation. Attention overlays need the model and the probe
images, so they are drawn by ``core-eval plot overlay``, not by the report.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from scipy.stats import spearmanr

from core_eval.report.errors import ReportError
from core_eval.report.plots import STYLE, new_figure, png
from core_eval.report.run import short_model

EFFECTS = ("causal_logprob_drop", "causal_acc_drop", "attribution_logprob_drop")
EFFECT_NAMES = {"causal_logprob_drop": "single-head log-prob drop", "causal_acc_drop": "single-head accuracy drop",
                "attribution_logprob_drop": "attributed log-prob drop"}
MEASURED = "causal_measured"


def _load(path):
    from core_eval.spec import load_head_spec

    p = Path(path)
    if not p.is_file():
        raise ReportError(f"--spec {path}: no such file (give a head spec written by core-eval score / select)")
    try:
        return load_head_spec(p)
    except (ValueError, OSError) as e:
        raise ReportError(f"--spec {path}: not a readable head spec ({e})") from None


def heads_table(spec) -> pd.DataFrame:
    """One row per head, sorted by RAM (highest first)."""
    ram = np.asarray(spec.score("ram") if "ram" in spec.scores else spec.score(), float)
    L, H = ram.shape
    selected = {tuple(h) for h in spec.heads}
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                       "ram": ram.reshape(-1)})
    for name in ("lift", "visual_mass", "std", "n"):
        if name in spec.scores:
            df[name] = np.asarray(spec.score(name), float).reshape(-1)
    measured = np.asarray(spec.score(MEASURED), float).reshape(-1) > 0 if MEASURED in spec.scores else None
    for name in EFFECTS:
        if name in spec.scores:
            v = np.asarray(spec.score(name), float).reshape(-1)
            if measured is not None and name.startswith("causal_"):
                v = np.where(measured, v, np.nan)
            df[name] = v
    df["selected"] = [(int(l), int(h)) in selected for l, h in zip(df["layer"], df["head"])]
    df["ram_rank"] = df.ram.rank(ascending=False, method="min").astype(int)
    return df.sort_values(["ram", "layer", "head"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def heatmap_figure(spec, title: str):
    from matplotlib.patches import Rectangle

    ram = np.asarray(spec.score("ram") if "ram" in spec.scores else spec.score(), float)
    L, H = ram.shape
    with rc_context(STYLE):
        fig = new_figure(max(8.5, 0.45 * H + 2.5), max(4.0, 0.4 * L + 2.0))
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(ram, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="RAM")
        for layer, head in spec.heads:
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="#ff2d2d", linewidth=2))
        ax.set_xticks(range(0, H, max(1, H // 24)))
        ax.set_yticks(range(0, L, max(1, L // 24)))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{title}: RAM per head ({len(spec.heads)} selected heads outlined)")
    return fig


def ram_vs_causal_figure(heads: pd.DataFrame, effect: str, title: str):
    d = heads.dropna(subset=[effect])
    rho = float(spearmanr(d.ram, d[effect]).statistic) if len(d) > 2 else float("nan")
    with rc_context(STYLE):
        fig = new_figure(8.5, 5.5)
        ax = fig.add_subplot(1, 1, 1)
        ax.scatter(d.ram, d[effect], c=np.where(d.selected, "#d62728", "#1f77b4"), s=28)
        for r in d.nlargest(3, effect).itertuples():
            ax.annotate(f"L{int(r.layer)}H{int(r.head)}", (r.ram, getattr(r, effect)), xytext=(4, 3),
                        textcoords="offset points")
        ax.axhline(0, color="#999", lw=1)
        ax.set_xlabel("RAM")
        ax.set_ylabel(effect.replace("_", " ") + " (head ablated alone)")
        ax.set_title(f"{title}: RAM vs causal effect (Spearman {rho:.2f}, {len(d)} heads; red = selected)")
    return fig, rho


def add_spec_sections(report, specs: list[str | os.PathLike]) -> None:
    """Add the sections of each spec to ``report`` (names get the spec's file stem when there are several)."""
    for path in specs:
        spec = _load(path)
        stem = Path(path).stem
        suffix = f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}" if len(specs) > 1 else ""
        name = f"heads{suffix}"
        title = (short_model(spec.model.get("name")) if spec.model.get("name") else stem) + \
            (f" ({stem})" if suffix else "")
        heads = heads_table(spec)
        n_sel = int(heads.selected.sum())
        report.add_section(name, heads, f"Heads of {path}: RAM, lift and visual mass per head, highest RAM "
                                        f"first; selected = in the spec's selection ({n_sel} heads, "
                                        f"{spec.rule or {}}); causal_* = single-head ablation effects "
                                        "(positive = ablating the head hurts).",
                           png(heatmap_figure(spec, title)))
        effect = next((e for e in EFFECTS if e in heads and heads[e].notna().sum() > 2), None)
        if effect is not None:
            fig, rho = ram_vs_causal_figure(heads, effect, title)
            top = heads.dropna(subset=[effect]).nlargest(min(10, len(heads)), effect)
            report.add_section(f"ram_vs_causal{suffix}", top,
                               f"Spearman(RAM, {EFFECT_NAMES[effect]}) = {rho:.3f} ({effect}). The heads whose ablation alone hurts most; "
                               "heads with low RAM here are ones a retrieval score misses.", png(fig))
