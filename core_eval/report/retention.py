"""The sparse retention verdict: per task, does hybrid sparse attention keep >= ``keep`` of the baseline?

For every hybrid sparse attention run (``kind == "sparse"``: ``n_heads`` full heads chosen by
``rule``, ``top`` = CoRe, every other head sparse) and each task's primary metric,
``retention = score / baseline`` over the samples both runs share. Its interval is
``1 + ci / baseline`` from the comparison's paired CI on ``delta = score - baseline``, with the
baseline's mean treated as fixed (the baseline's own sampling error is not in it). For a
lower-is-better metric retention is inverted, ``baseline / score`` (interval
``baseline / (baseline + ci)``), so that below 1 is worse either way. ``verdict``: ``keeps`` when the
interval's lower bound is >= ``keep``, ``loses`` when its upper bound is below it, ``inconclusive``
otherwise; ``no CI`` without paired per-sample values, ``n/a`` when the baseline is <= 0 (no ratio).

Where ``top`` (CoRe) and ``random`` runs of the same variant, options and number of full heads
exist, each CoRe row also has ``diff = score(CoRe) - score(random)``, paired sample by sample as in
:mod:`~core_eval.report.verdict` (random seeds pooled), its CI and ``vs_random`` (``better`` /
``worse`` / ``inconclusive``; the sign is flipped for a lower-is-better metric).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from core_eval.report.run import Run
from core_eval.report.stats import paired_ci
from core_eval.report.verdict import pooled_pairs

#: default share of the baseline a hybrid sparse attention run must keep (``core-eval report --keep``)
KEEP = 0.95

RETENTION_COLUMNS = ["model", "harness", "task", "metric", "variant", "rule", "n_heads", "frac_heads", "label", "run",
                     "n", "baseline", "score", "retention", "retention_low", "retention_high", "keep", "verdict",
                     "random_score", "diff", "diff_low", "diff_high", "n_random_runs", "vs_random", "test", "note",
                     "summary"]


def sparse_rows(comparison: pd.DataFrame, primary: dict) -> pd.DataFrame:
    """Per-run comparison rows of hybrid sparse attention runs on each task's primary metric."""
    from core_eval.report.tables import _primary_rows

    c = _primary_rows(comparison, primary)
    if c.empty:
        return c
    return c[(c.kind == "sparse") & ~c.is_group.astype(bool)]


def _ratio(b: float, x: float, lower_better: bool) -> float:
    """Retention of a run scoring ``x`` against a baseline ``b > 0`` (``inf`` where the inverse blows up)."""
    if not lower_better:
        return x / b
    return b / x if x > 0 else math.inf


def _retention(row, lower_better: bool, keep: float) -> dict:
    b, s, lo, hi = (float(row[k]) for k in ("baseline", "score", "ci_low", "ci_high"))
    out = {"retention": math.nan, "retention_low": math.nan, "retention_high": math.nan, "note": ""}
    if math.isnan(b) or math.isnan(s):
        return {**out, "verdict": "n/a", "note": "no score"}
    if b <= 0:
        return {**out, "verdict": "n/a", "note": f"baseline {b:g} <= 0: retention is not a ratio of it"}
    out["retention"] = _ratio(b, s, lower_better)
    if lower_better:
        out["note"] = "lower is better: retention = baseline / score"
    if math.isnan(lo) or math.isnan(hi):
        why = row.get("stats") if isinstance(row.get("stats"), str) else ""
        return {**out, "verdict": "no CI", "note": "; ".join(x for x in (out["note"], why) if x)}
    ends = sorted((_ratio(b, b + lo, lower_better), _ratio(b, b + hi, lower_better)))
    out["retention_low"], out["retention_high"] = ends
    out["verdict"] = "keeps" if ends[0] >= keep else "loses" if ends[1] < keep else "inconclusive"
    return out


def _vs_random(top: Run, randoms: list[Run], task: str, metric: str, filt: str, lower_better: bool,
               **stat_kw) -> dict:
    """CoRe minus random, paired sample by sample, the random runs pooled."""
    tvals, rvals = pooled_pairs([top], randoms, task, metric, filt)
    out = {"n_random_runs": len(randoms)}
    if not tvals or sum(len(x) for x in tvals) == 0:
        ts_, rs_ = top.score(task, metric, filt), float(np.mean([r.score(task, metric, filt) for r in randoms]))
        return {**out, "random_score": rs_, "diff": ts_ - rs_, "diff_low": math.nan, "diff_high": math.nan,
                "vs_random": "no per-sample logs"}
    tv, rv = np.concatenate(tvals), np.concatenate(rvals)
    lo, hi, _ = paired_ci(rv, tv, **stat_kw)
    better, worse = (lo > 0, hi < 0) if not lower_better else (hi < 0, lo > 0)
    return {**out, "random_score": float(rv.mean()), "diff": float(tv.mean() - rv.mean()), "diff_low": lo,
            "diff_high": hi, "vs_random": "better" if better else "worse" if worse else "inconclusive"}


def retention_table(rows: pd.DataFrame, runs: list[Run], *, keep: float = KEEP, n_boot: int = 10000, seed: int = 0,
                    alpha: float = 0.05) -> pd.DataFrame:
    """``rows``: :func:`sparse_rows` of the comparison; one row per sparse run and task (see the module doc)."""
    if rows.empty:
        return pd.DataFrame(columns=RETENTION_COLUMNS)
    by_name = {r.name: r for r in runs}
    stat_kw = {"n_boot": n_boot, "seed": seed, "alpha": alpha}
    rows = rows.assign(_opts=[json.dumps(by_name[r].intervention.options, sort_keys=True, default=str)
                              if r in by_name else "" for r in rows.run])
    keys = ["model", "harness", "task", "metric", "filter", "variant", "_opts", "n_heads"]
    out = []
    for (model, harness, task, metric, filt, variant, _, n_heads), g in rows.groupby(keys, sort=True, dropna=False):
        randoms = [by_name[r] for r in g[g.rule == "random"].run if r in by_name]
        g = g.assign(_order=g.rule.map({"top": 0, "random": 1}).fillna(2))
        for _, row in g.sort_values(["_order", "label"], kind="stable").iterrows():
            lower_better = row.higher_is_better is not None and not pd.isna(row.higher_is_better) \
                and not bool(row.higher_is_better)
            rec = {"model": model, "harness": harness, "task": task, "metric": metric, "variant": variant,
                   "rule": row.rule, "n_heads": n_heads, "frac_heads": row.frac_heads, "label": row.label,
                   "run": row.run, "n": row.n, "baseline": row.baseline, "score": row.score, "keep": keep,
                   "test": row.test, "random_score": math.nan, "diff": math.nan, "diff_low": math.nan,
                   "diff_high": math.nan, "n_random_runs": 0, "vs_random": ""}
            rec.update(_retention(row, lower_better, keep))
            if row.rule == "top" and randoms and row.run in by_name:
                rec.update(_vs_random(by_name[row.run], randoms, task, metric, filt, lower_better, **stat_kw))
            rec["summary"] = _sentence(rec, alpha)
            out.append(rec)
    return pd.DataFrame(out, columns=RETENTION_COLUMNS)


def _sentence(r: dict, alpha: float) -> str:
    k = f"{100 * r['keep']:g}%"
    what = {"keeps": f"KEEPS >= {k} of the baseline", "loses": f"LOSES: below {k} of the baseline",
            "inconclusive": f"INCONCLUSIVE vs {k} of the baseline", "no CI": f"NO CI vs {k} of the baseline",
            "n/a": "N/A"}[r["verdict"]]
    if math.isnan(r["retention"]):
        ret = ""
    else:
        ci = (f" [{r['retention_low']:.3f}, {r['retention_high']:.3f}] ({100 * (1 - alpha):g}% CI, baseline fixed)"
              if not math.isnan(r["retention_low"]) else "")
        ret = f": retention {r['retention']:.3f}{ci}"
    n = f", n = {int(r['n'])}" if not pd.isna(r["n"]) else ""
    text = f"{r['task']} ({r['metric']}, {r['label']}): {what}{ret}, {r['score']:.3f} vs {r['baseline']:.3f}{n}"
    if r["note"]:
        text += f" ({r['note']})"
    if r["vs_random"]:
        ci = f" [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]" if not math.isnan(r["diff_low"]) else ""
        pooled = f", {r['n_random_runs']} random draws pooled" if r["n_random_runs"] > 1 else ""
        text += (f"; CoRe - random full heads: {r['diff']:+.3f}{ci} (random {r['random_score']:.3f}, "
                 f"{r['vs_random']}{pooled})")
    return text
