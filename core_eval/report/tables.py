"""Derived tables: primary metric per task, causal test, ablation curves, accuracy vs speed, leaderboard.

All take the comparison table built by :func:`core_eval.report.comparison.compare` (one row per run,
task, metric, filter) and use one *primary* metric per task: the first of :data:`PREFERRED` the
task has (filter ``none`` first), unless overridden with ``task=metric`` or ``metric``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from core_eval.report.comparison import Note
from core_eval.report.errors import ReportError
from core_eval.report.pooling import pool_rows
from core_eval.report.run import CONTROL_RULES, Run

PREFERRED = ("acc", "exact_match", "relaxed_match", "acc_norm", "hit", "Overall", "f1", "em", "bleu")

CAUSAL_COLUMNS = ["model", "harness", "task", "metric", "variant", "n_heads", "frac_heads", "rule", "label", "n_runs",
                  "run", "n", "baseline", "score", "delta", "ci_low", "ci_high", "p_value", "n_lost", "n_gained", "test"]
CURVE_COLUMNS = ["model", "harness", "task", "metric", "variant", "rule", "n_heads", "frac_heads", "n_runs", "score",
                 "delta", "ci_low", "ci_high", "label", "run"]
SPEED_COLUMNS = ["model", "task", "metric", "label", "run", "variant", "n_heads", "speedup", "score", "baseline",
                 "delta", "ci_low", "ci_high"]


def parse_metric_overrides(items: Iterable[str] | dict | None) -> tuple[dict[str, str], list[str]]:
    """``["task=metric", "metric"]`` -> (per-task choices, global preference list)."""
    if not items:
        return {}, []
    if isinstance(items, dict):
        return dict(items), []
    per_task, global_ = {}, []
    for item in items:
        if "=" in item:
            t, m = item.split("=", 1)
            per_task[t.strip()] = m.strip()
        else:
            global_.append(item.strip())
    return per_task, global_


def primary_metrics(runs: list[Run], overrides=None) -> dict[str, tuple[str, str]]:
    """task -> (metric, filter) used by the summary tables (leaf tasks of all runs)."""
    per_task, global_ = parse_metric_overrides(overrides)
    frames = [r.metrics[~r.metrics.is_group] for r in runs if len(r.metrics)]
    if not frames:
        return {}
    m = pd.concat(frames)
    out = {}
    for task, g in m.groupby("task", sort=True):
        keys = set(map(tuple, g[["metric", "filter"]].values))
        names = {k[0] for k in keys}
        if task in per_task and per_task[task] not in names:
            raise ReportError(f"--metric {task}={per_task[task]}: task {task} has no metric {per_task[task]!r}; "
                              f"it has {sorted(names)}")
        order = ([per_task[task]] if task in per_task else []) + global_ + list(PREFERRED) + sorted(names)
        metric = next(x for x in order if x in names)
        filters = sorted(f for mm, f in keys if mm == metric)
        out[task] = (metric, "none" if "none" in filters else filters[0])
    for t in per_task:
        if t not in out:
            raise ReportError(f"--metric {t}=...: no run has task {t!r} (tasks: {sorted(out)})")
    return out


def _primary_rows(comparison: pd.DataFrame, primary: dict) -> pd.DataFrame:
    if comparison.empty:
        return comparison
    keep = [(primary.get(t) == (m, f)) for t, m, f in comparison[["task", "metric", "filter"]].values]
    return comparison[np.array(keep, dtype=bool)] if len(keep) else comparison


def causal_rows(comparison: pd.DataFrame, primary: dict) -> pd.DataFrame:
    """Per-run comparison rows of the causal test: primary metric, ablations with a control rule."""
    c = _primary_rows(comparison, primary)
    if c.empty:
        return c
    return c[(c.kind != "sparse") & c.rule.isin(CONTROL_RULES) & ~c.is_group.astype(bool)]


def causal_table(comparison: pd.DataFrame, primary: dict, pairs: dict | None = None, *, n_boot: int = 10000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[pd.DataFrame, list[Note]]:
    """Top vs bottom vs random vs layer-matched random ablations at equal head counts, one row per rule
    and size, seeds pooled (:mod:`~core_eval.report.pooling`)."""
    c = causal_rows(comparison, primary)
    notes = []
    if c.empty:
        return pd.DataFrame(columns=CAUSAL_COLUMNS), notes
    for (model, variant), g in c.groupby(["model", "variant"], sort=False):
        sizes = sorted(set(g.n_heads))
        for n in sizes:
            have = set(g[g.n_heads == n].rule)
            missing = [r for r in CONTROL_RULES if r not in have]
            if missing:
                notes.append(Note("info", f"causal test ({variant}, {n} heads, model {model}): no "
                                          f"{', '.join(missing)} run of that size"))
        if len(sizes) > 1 and "top" in set(g.rule):
            notes.append(Note("info", f"causal test ({variant}, model {model}): head sets of different sizes "
                                      f"{sizes}; compare rows of equal n_heads only"))
    pooled = pool_rows(c, pairs or {}, n_boot=n_boot, seed=seed, alpha=alpha)
    pooled = pooled.assign(_order=pooled.rule.map({r: i for i, r in enumerate(CONTROL_RULES)}))
    pooled = pooled.sort_values(["model", "harness", "task", "variant", "n_heads", "_order"], kind="stable")
    return pooled[CAUSAL_COLUMNS].reset_index(drop=True), notes


def curves_table(comparison: pd.DataFrame, runs: list[Run], baselines: dict, primary: dict,
                 pairs: dict | None = None, *, n_boot: int = 10000, seed: int = 0,
                 alpha: float = 0.05) -> pd.DataFrame:
    """Score vs size of the ablated head set, one line per (variant, rule), one point per size (seeds pooled:
    one marker, one interval); x = 0 is the baseline."""
    c = _primary_rows(comparison, primary)
    if c.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    c = c[(c.kind != "sparse") & (c.n_heads > 0) & ~c.is_group.astype(bool) & c.rule.ne("unknown")]
    if c.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    by_name = {r.name: r for r in runs}
    pooled = pool_rows(c, pairs or {}, n_boot=n_boot, seed=seed, alpha=alpha)
    rows = []
    for (model, harness, task, metric, variant, rule), g in pooled.groupby(
            ["model", "harness", "task", "metric", "variant", "rule"], sort=True):
        first = c[(c.model == model) & (c.harness == harness) & (c.task == task) & (c.rule == rule)
                  & (c.variant == variant)]
        base = by_name.get(first.baseline_run.iloc[0]) if len(first) else None
        if base is not None:
            filt = primary[task][1]
            rows.append({"model": model, "harness": harness, "task": task, "metric": metric, "variant": variant,
                         "rule": rule, "n_heads": 0, "frac_heads": 0.0, "n_runs": 1,
                         "score": base.score(task, metric, filt), "delta": 0.0, "ci_low": math.nan,
                         "ci_high": math.nan, "label": "baseline", "run": base.name})
        for r in g.itertuples():
            rows.append({"model": model, "harness": harness, "task": task, "metric": metric, "variant": variant,
                         "rule": rule, "n_heads": r.n_heads, "frac_heads": r.frac_heads, "n_runs": r.n_runs,
                         "score": r.score, "delta": r.delta, "ci_low": r.ci_low, "ci_high": r.ci_high,
                         "label": r.label, "run": r.run})
    out = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    return out.sort_values(["model", "harness", "task", "variant", "rule", "n_heads"], kind="stable").reset_index(drop=True)


def _match_keys(run: Run, display: str) -> set[str]:
    p = run.path
    keys = {display, run.label, run.name, str(p), str(p.parent), p.name, p.parent.name}
    if run.arg:  # the folder given as RUN, e.g. lm_eval's --output_path
        keys |= {run.arg, Path(run.arg).name}
    return keys


def speed_table(speed: pd.DataFrame, runs: list[Run], labels: dict[str, str], comparison: pd.DataFrame,
                baseline_of: dict[str, Run], primary: dict) -> tuple[pd.DataFrame, list[Note]]:
    """Accuracy vs measured speedup (see :mod:`core_eval.report.speed`)."""
    notes, matched = [], {}
    extra_cols = [c for c in speed.columns if c not in ("run", "speedup")]
    for rec in speed.to_dict("records"):
        hits = [r for r in runs if rec["run"] in _match_keys(r, labels[r.name])]
        if not hits:
            notes.append(Note("warning", f"speed entry {rec['run']!r} matches no run (use a label or run name "
                                         f"from runs.csv)"))
            continue
        if len(hits) > 1:
            notes.append(Note("info", f"speed entry {rec['run']!r} matches {len(hits)} runs: "
                                      f"{', '.join(r.name for r in hits)}; applied to each"))
        for r in hits:
            matched[r.name] = rec
    rows = []
    c = _primary_rows(comparison, primary)
    models_with_speed = {r.model for r in runs if r.name in matched}
    for run in runs:
        rec = matched.get(run.name)
        if rec is None and not (run.is_baseline and run.model in models_with_speed):
            continue
        sp = rec["speedup"] if rec else 1.0
        extra = {k: rec.get(k) for k in extra_cols} if rec else {}
        iv = run.intervention
        for task, (metric, filt) in sorted(primary.items()):
            if task not in run.tasks:
                continue
            row = {"model": run.model, "task": task, "metric": metric, "label": labels[run.name], "run": run.name,
                   "variant": iv.variant if not iv.is_baseline else "none", "n_heads": iv.n_heads, "speedup": sp,
                   **extra}
            cr = c[(c.run == run.name) & (c.task == task)]
            if len(cr):
                x = cr.iloc[0]
                row.update(score=x.score, baseline=x.baseline, delta=x.delta, ci_low=x.ci_low, ci_high=x.ci_high)
            else:
                s = run.score(task, metric, filt)
                row.update(score=s, baseline=s if run.is_baseline else math.nan,
                           delta=0.0 if run.is_baseline else math.nan, ci_low=math.nan, ci_high=math.nan)
            rows.append(row)
    return pd.DataFrame(rows, columns=SPEED_COLUMNS + extra_cols), notes


def leaderboard(runs: list[Run], labels: dict[str, str], comparison: pd.DataFrame, primary: dict,
                baseline_of: dict[str, Run]) -> tuple[pd.DataFrame, list[Note]]:
    """Score per task (primary metric, as reported) + mean, and deltas vs each model's own baseline.

    ``mean`` averages the tasks every listed run has; ``Δ <task>`` and ``Δ mean`` come from the
    paired comparison (0 for the baseline itself).
    """
    notes = []
    tasks = sorted(primary)
    common = [t for t in tasks if all(t in r.tasks for r in runs)]
    mean_tasks = {r.name: common for r in runs}
    if runs and len(common) < len(tasks):
        if common:
            notes.append(Note("info", f"leaderboard mean over the {len(common)} task(s) every run has "
                                      f"({', '.join(common)}); not in the mean: "
                                      f"{', '.join(t for t in tasks if t not in common)}"))
        else:
            per_model: dict = {}
            for r in runs:
                per_model.setdefault(r.model, []).append(r)
            for rs in per_model.values():
                mt = [t for t in tasks if all(t in r.tasks for r in rs)]
                for r in rs:
                    mean_tasks[r.name] = mt
            notes.append(Note("warning", "no task is shared by every run: each model's mean is over the tasks "
                                         "all its runs have (n_tasks); means of different models are not "
                                         "comparable"))
    c = _primary_rows(comparison, primary)
    rows = []
    for run in runs:
        row = {"model": run.model_short if run.model else "unknown", "label": labels[run.name], "run": run.name}
        deltas = {}
        for t in tasks:
            metric, filt = primary[t]
            row[t] = run.score(t, metric, filt) if t in run.tasks else math.nan
            if run.is_baseline and baseline_of.get(run.name) is None:
                deltas[t] = 0.0 if t in run.tasks else math.nan
            else:
                cr = c[(c.run == run.name) & (c.task == t)]
                deltas[t] = float(cr.delta.iloc[0]) if len(cr) else math.nan
        mt = mean_tasks[run.name]
        row["mean"] = float(np.mean([row[t] for t in mt])) if mt else math.nan
        row["n_tasks"] = len(mt)
        for t in tasks:
            row[f"Δ {t}"] = deltas[t]
        row["Δ mean"] = float(np.mean([deltas[t] for t in mt])) if mt else math.nan
        row["_base"] = run.is_baseline and baseline_of.get(run.name) is None
        rows.append(row)
    cols = ["model", "label", "run", *tasks, "mean", "n_tasks", *[f"Δ {t}" for t in tasks], "Δ mean"]
    if not rows:
        return pd.DataFrame(columns=cols), notes
    df = pd.DataFrame(rows)
    df = df.sort_values(["model", "_base", "mean"], ascending=[True, False, False], kind="stable")
    return df[cols].reset_index(drop=True), notes
