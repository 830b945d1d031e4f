"""Pool runs that differ only in their random draw (seeds of ``random`` / ``layer_matched_random``).

Runs of one (model, harness, task, metric, filter, variant, rule, head count) are pooled: their
paired (baseline, run) values are concatenated and the delta, its CI and McNemar's test are
computed once from the pooled paired differences (:func:`~core_eval.report.stats.paired_ci`),
never by averaging per-seed bounds, which is not an interval of anything. The pooled test
treats the pairs of different seeds as independent (they share the samples, so it is somewhat
optimistic; ``n_runs`` says how many draws were pooled).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core_eval.report.stats import is_binary, mcnemar_exact, paired_ci

GROUP = ["model", "harness", "task", "metric", "filter", "variant", "rule", "n_heads"]
POOLED_COLUMNS = [*GROUP, "frac_heads", "label", "n_runs", "run", "n", "baseline", "score", "delta", "ci_low",
                  "ci_high", "p_value", "n_lost", "n_gained", "test"]


def _size_label(labels: list[str]) -> str:
    """``zero random-5% seed=0 (2 heads)`` x 3 -> ``zero random-5% (2 heads, 3 seeds)``."""
    import re

    base = {re.sub(r" seed=\S+", "", str(x)) for x in labels}
    label = sorted(base)[0] if base else ""
    if len(labels) > 1 and label.endswith(")"):
        label = label[:-1] + f", {len(labels)} seeds)"
    return label


def pool_rows(rows: pd.DataFrame, pairs: dict, *, n_boot: int = 10000, seed: int = 0,
              alpha: float = 0.05) -> pd.DataFrame:
    """One row per :data:`GROUP` of comparison ``rows``, pooled over its runs (see the module doc)."""
    out = []
    if rows.empty:
        return pd.DataFrame(columns=POOLED_COLUMNS)
    for key, g in rows.groupby(GROUP, sort=False, dropna=False):
        rec = dict(zip(GROUP, key))
        ps = [pairs.get((r.run, r.task, r.metric, r.filter)) for r in g.itertuples()]
        rec.update(frac_heads=g.frac_heads.iloc[0], label=_size_label(list(g.label)), n_runs=len(g),
                   run=";".join(g.run))
        if all(p is not None for p in ps):
            b = np.concatenate([p.baseline for p in ps])
            v = np.concatenate([p.variant for p in ps])
            lo, hi, method = paired_ci(b, v, n_boot=n_boot, seed=seed, alpha=alpha)
            rec.update(n=int(b.size), baseline=float(b.mean()), score=float(v.mean()),
                       delta=float(v.mean() - b.mean()), ci_low=lo, ci_high=hi, test=method,
                       p_value=math.nan, n_lost=math.nan, n_gained=math.nan)
            if is_binary(b) and is_binary(v):
                mc = mcnemar_exact(b, v)
                rec.update(p_value=mc.p_value, n_lost=mc.n_lost, n_gained=mc.n_gained, test=f"{method}+mcnemar")
        else:  # aggregates only: the mean delta, no interval
            rec.update(n=g.n.sum(min_count=1), baseline=g.baseline.mean(), score=g.score.mean(), delta=g.delta.mean(),
                       ci_low=math.nan, ci_high=math.nan, p_value=math.nan, n_lost=math.nan, n_gained=math.nan,
                       test="aggregate only")
        out.append(rec)
    return pd.DataFrame(out, columns=POOLED_COLUMNS)
