"""Compare head specs of one shape: other seeds, query-row rules, sample counts or models.

:func:`compare_specs` gives, for every pair of specs, the overlap of their selected sets and of
their top-k sets (by the compared score, ties by lift as in the selection rule) and the rank
correlation of the scores over all heads (Spearman and Kendall's tau-b, :mod:`scipy.stats`);
:func:`diff_heatmap` draws each spec's scores minus the first one's. ``core-eval compare-specs``
(:func:`run_compare`) prints the tables and writes ``pairs.csv``, ``specs.csv`` and
``score_diff.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class SpecComparison:
    """``specs``: one row per spec (label, file, model, scorer settings, score, top-k heads).
    ``pairs``: one row per pair ``a < b`` (labels, overlaps, Jaccard, ``spearman``, ``kendall``,
    ``max_abs_diff``). ``scores``: the compared ``[L, H]`` arrays; ``top``: each spec's top-k set."""

    specs: "object"  # pandas.DataFrame
    pairs: "object"  # pandas.DataFrame
    labels: list[str]
    scores: list[np.ndarray]
    top: list[list[tuple[int, int]]]
    selected: list[list[tuple[int, int]]]
    k: int
    score_names: list[str]


def _labels(specs) -> list[str]:
    names = [Path(s.source).name if s.source else f"spec{i}" for i, s in enumerate(specs)]
    if len(set(names)) < len(names):  # same file names in different folders
        names = [str(Path(*Path(s.source).parts[-2:])) if s.source else n for s, n in zip(specs, names)]
    return [n if names.count(n) == 1 else f"{i}:{n}" for i, n in enumerate(names)]


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare_specs(specs: Sequence, *, score: str | None = None, k: int | None = None,
                  frac: float | None = None) -> SpecComparison:
    """Compare ``specs`` (:class:`~core_eval.spec.HeadSpec`, at least 2, all of one shape).

    ``score``: the array to compare (default: each spec's selection score). ``k`` / ``frac``: size
    of the top-k sets (default ``frac=0.05``, as the default selection).
    """
    import pandas as pd
    from scipy.stats import kendalltau, spearmanr

    from core_eval.spec import HeadSpecError, heads_by_layer, resolve_count

    if len(specs) < 2:
        raise ValueError("compare-specs needs at least two head specs")
    labels = _labels(specs)
    shapes = [(int(s.model["num_layers"]), int(s.model["num_heads"])) for s in specs]
    for label, s, shape in zip(labels, specs, shapes):
        if shape != shapes[0]:
            raise HeadSpecError(
                f"shapes differ: {labels[0]} ({specs[0].model.get('name')!r}) has {shapes[0][0]} layers x "
                f"{shapes[0][1]} heads, {label} ({s.model.get('name')!r}) has {shape[0]} layers x {shape[1]} heads",
                "compare specs of models with the same layer x head shape")
    L, H = shapes[0]
    if frac is None and k is None:
        frac = 0.05
    k = resolve_count(L * H, frac=frac, k=k)
    names = [score or s.selection.get("score") or "ram" for s in specs]
    arrays, tops = [], []
    for label, s, name in zip(labels, specs, names):
        if name not in s.scores:
            raise HeadSpecError(f"{label} has no score array {name!r} (has: {', '.join(s.scores)})",
                                "pass --score with an array every spec has")
        arrays.append(np.asarray(s.scores[name], dtype=np.float64))
        tops.append(s.with_selection("top", k=k, score=name).heads)
    selected = [s.heads for s in specs]
    rows = []
    for label, s, name, top in zip(labels, specs, names, tops):
        sc = s.scorer
        rows.append({"spec": label, "file": s.source, "model": s.model.get("name"),
                     "probes": sc.get("probes"), "query_rows": sc.get("query_rows"), "seed": sc.get("seed"),
                     "n_used": sc.get("n_used", sc.get("n_samples")), "score": name,
                     "selection": s.rule.get("rule"), "n_selected": len(s.heads),
                     f"top_{k}": str(heads_by_layer(top)),
                     "set_exact": (s.stability or {}).get("set_exact") if (s.stability or {}).get("k") == k else None})
    pairs = []
    for i in range(len(specs)):
        for j in range(i + 1, len(specs)):
            a, b = arrays[i].ravel(), arrays[j].ravel()
            constant = np.ptp(a) == 0 or np.ptp(b) == 0
            rho = math.nan if constant else float(spearmanr(a, b).statistic)
            tau = math.nan if constant else float(kendalltau(a, b).statistic)
            ti, tj, si, sj = set(tops[i]), set(tops[j]), set(selected[i]), set(selected[j])
            pairs.append({"a": labels[i], "b": labels[j], f"top_{k}_overlap": len(ti & tj),
                          f"top_{k}_jaccard": _jaccard(ti, tj), "selected_overlap": len(si & sj),
                          "selected_sizes": f"{len(si)}/{len(sj)}", "selected_jaccard": _jaccard(si, sj),
                          "spearman": rho, "kendall": tau, "max_abs_diff": float(np.abs(a - b).max())})
    return SpecComparison(pd.DataFrame(rows), pd.DataFrame(pairs), labels, arrays, tops, selected, k, names)


def diff_heatmap(cmp: SpecComparison, path) -> Path:
    """One panel per spec after the first: its scores minus the first spec's (diverging colours,
    one symmetric scale for all panels); top-k heads of the first spec outlined in black, of the
    panel's spec marked with a dot. At least 800 px wide, text >= 10 pt."""
    from matplotlib.patches import Rectangle

    from core_eval.scoring.plots import _figure, _save

    ref = cmp.scores[0]
    diffs = [s - ref for s in cmp.scores[1:]]
    L, H = ref.shape
    vmax = max(float(np.abs(d).max()) for d in diffs) or 1.0
    n = len(diffs)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    pw, ph = max(3.6, 0.3 * H + 1.2), max(3.0, 0.26 * L + 1.4)
    fw, fh = max(8.0, cols * pw + 1.4), rows * ph + 1.0
    fig = _figure(fw, fh)
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for idx, ax in enumerate(axes.ravel()):
        if idx >= n:
            ax.set_axis_off()
            continue
        im = ax.imshow(diffs[idx], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        for layer, head in cmp.top[0]:
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.8))
        top = cmp.top[idx + 1]
        if top:
            ax.scatter([h for _, h in top], [layer for layer, _ in top], s=22, c="#ffcc00", edgecolors="black",
                       linewidths=0.8, zorder=3)
        ax.set_title(f"{cmp.labels[idx + 1]} - {cmp.labels[0]}", fontsize=10)
        ax.set_xlabel("head", fontsize=10)
        ax.set_ylabel("layer", fontsize=10)
        ax.tick_params(labelsize=10)
        ax.set_xticks(range(0, H, max(1, math.ceil(H / 16))))
        ax.set_yticks(range(0, L, max(1, math.ceil(L / 16))))
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9)
    cb.set_label(f"{cmp.score_names[0]} difference", fontsize=10)
    cb.ax.tick_params(labelsize=10)
    fig.suptitle(f"score difference vs {cmp.labels[0]} (box: its top-{cmp.k}; dot: the panel's top-{cmp.k})",
                 fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------- CLI


def add_compare_parser(subparsers):
    """``core-eval compare-specs A B [C ...]``; sets ``fn=run_compare``."""
    p = subparsers.add_parser("compare-specs", help="overlap, rank correlation and score-difference heatmap of "
                              "head specs (seeds, query-row rules, sample counts, models)")
    p.add_argument("specs", nargs="+", help="two or more head specs of one layer x head shape")
    p.add_argument("--score", default=None, help="score array to compare (default: each spec's selection score)")
    p.add_argument("--k", type=int, default=None, help="size of the top-k sets (default: 5%% of the heads)")
    p.add_argument("--frac", type=float, default=None, help="top-k size as a fraction of the heads")
    p.add_argument("-o", "--out", default="spec_comparison",
                   help="folder for pairs.csv, specs.csv and score_diff.png (default: spec_comparison)")
    p.set_defaults(fn=run_compare)
    return p


def run_compare(args) -> int:
    import pandas as pd

    from core_eval._io import atomic_write
    from core_eval.spec import load_head_spec

    if len(args.specs) < 2:
        raise ValueError("compare-specs needs at least two head specs")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    specs = [load_head_spec(p) for p in args.specs]
    cmp = compare_specs(specs, score=args.score, k=args.k, frac=args.frac)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(cmp.specs.drop(columns=["file"]).to_string(index=False))
        print()
        print(cmp.pairs.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "specs.csv", cmp.specs.to_csv(index=False))
    atomic_write(out / "pairs.csv", cmp.pairs.to_csv(index=False))
    png = diff_heatmap(cmp, out / "score_diff.png")
    print(f"\nwrote {out / 'pairs.csv'}, {out / 'specs.csv'}, {png}")
    return 0
