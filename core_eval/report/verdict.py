"""The verdict of the causal test: per task, does ablating the top heads hurt more than each control?

For every (model, harness, task, variant, head count) with a ``top`` run, and every control rule
(``bottom``, ``random``, ``layer_matched_random``) with runs of the same size, the top run and the
control run are paired sample by sample (both scored the same samples, so the baseline cancels)
and ``diff = score(top) - score(control)`` is estimated from the pooled paired differences over
all top x control runs (control seeds pooled): Newcombe's paired interval for 0/1 metrics, the
paired bootstrap otherwise, and McNemar's exact test. ``verdict``: ``yes`` when the interval lies
below 0 (top hurts more; above 0 for a lower-is-better metric), ``no`` when it lies on the other
side (the control hurts more), ``inconclusive`` otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core_eval.report.comparison import pair_samples
from core_eval.report.run import CONTROL_RULES, Run
from core_eval.report.stats import is_binary, mcnemar_exact, paired_ci

VERDICT_COLUMNS = ["model", "harness", "task", "metric", "variant", "n_heads", "control", "verdict", "top_score",
                   "control_score", "diff", "ci_low", "ci_high", "p_value", "n", "n_control_runs", "test", "summary"]


def _values(run: Run, task: str, metric: str, filt: str) -> pd.DataFrame:
    s = run.samples
    return s[(s.task == task) & (s.metric == metric) & (s["filter"] == filt)]


def pooled_pairs(tops: list[Run], ctrls: list[Run], task: str, metric: str, filt: str) -> tuple[list, list]:
    """Per (top, control) run pair, the paired per-sample values: (top values, control values) lists."""
    tvals, cvals = [], []
    for t in tops:
        for c in ctrls:
            ts, cs = _values(t, task, metric, filt), _values(c, task, metric, filt)
            if ts.empty or cs.empty:
                continue
            p = pair_samples(cs, ts)
            tvals.append(p.variant)
            cvals.append(p.baseline)
    return tvals, cvals


def verdict_table(causal_rows: pd.DataFrame, runs: list[Run], *, n_boot: int = 10000, seed: int = 0,
                  alpha: float = 0.05) -> pd.DataFrame:
    """``causal_rows``: per-run comparison rows of the primary metrics with a control rule (see the module doc)."""
    by_name = {r.name: r for r in runs}
    out = []
    if causal_rows.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    keys = ["model", "harness", "task", "metric", "filter", "variant", "n_heads"]
    for key, g in causal_rows.groupby(keys, sort=True, dropna=False):
        model, harness, task, metric, filt, variant, n_heads = key
        tops = [by_name[r] for r in g[g.rule == "top"].run if r in by_name]
        if not tops:
            continue
        hib = g.higher_is_better.dropna()
        lower_better = len(hib) > 0 and not bool(hib.iloc[0])
        for control in CONTROL_RULES[1:]:
            ctrls = [by_name[r] for r in g[g.rule == control].run if r in by_name]
            if not ctrls:
                continue
            tvals, cvals = pooled_pairs(tops, ctrls, task, metric, filt)
            rec = {"model": model, "harness": harness, "task": task, "metric": metric, "variant": variant,
                   "n_heads": n_heads, "control": control, "n_control_runs": len(ctrls)}
            if not tvals or sum(len(x) for x in tvals) == 0:
                ts_ = g[g.rule == "top"].score.mean()
                cs_ = g[g.rule == control].score.mean()
                rec.update(verdict="no per-sample logs", top_score=ts_, control_score=cs_, diff=ts_ - cs_,
                           ci_low=math.nan, ci_high=math.nan, p_value=math.nan, n=0, test="aggregate only")
            else:
                tv, cv = np.concatenate(tvals), np.concatenate(cvals)
                lo, hi, method = paired_ci(cv, tv, n_boot=n_boot, seed=seed, alpha=alpha)
                pv = mcnemar_exact(cv, tv).p_value if is_binary(cv) and is_binary(tv) else math.nan
                worse, better = (hi < 0, lo > 0) if not lower_better else (lo > 0, hi < 0)
                rec.update(verdict="yes" if worse else "no" if better else "inconclusive",
                           top_score=float(tv.mean()), control_score=float(cv.mean()), diff=float(tv.mean() - cv.mean()),
                           ci_low=lo, ci_high=hi, p_value=pv, n=int(tv.size),
                           test=method + ("+mcnemar" if not math.isnan(pv) else ""))
            rec["summary"] = _sentence(rec, alpha)
            out.append(rec)
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


def _sentence(r: dict, alpha: float) -> str:
    what = {"yes": "YES, top hurts more than", "no": "NO, top hurts less than",
            "inconclusive": "INCONCLUSIVE: top vs", "no per-sample logs": "NO PER-SAMPLE LOGS: top vs"}[r["verdict"]]
    ctrl = r["control"].replace("_", "-")
    ci = (f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if not math.isnan(r["ci_low"]) else "")
    p = f", p = {r['p_value']:.3g}" if not math.isnan(r["p_value"]) else ""
    seeds = f", {r['n_control_runs']} {ctrl} draws pooled" if r["n_control_runs"] > 1 else ""
    return (f"{r['task']} ({r['metric']}, {r['variant']}, {int(r['n_heads'])} heads): {what} {ctrl}: "
            f"{r['top_score']:.3f} vs {r['control_score']:.3f}, diff {r['diff']:+.3f}{ci} "
            f"({100 * (1 - alpha):g}% CI){p}, n = {r['n']}{seeds}")
