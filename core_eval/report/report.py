"""Assemble a report: assign baselines, compare, derive the verdict, tables and figures.

Baselines: one per (model, harness, task), see :mod:`~core_eval.report.baselines`. Runs of
different models are never compared with each other. ``specs``: head specs whose RAM heatmap,
heads table and RAM-vs-causal plot join the report (:mod:`~core_eval.report.spec_sections`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from core_eval.report import plots
from core_eval.report.baselines import assign_baselines
from core_eval.report.comparison import COMPARISON_COLUMNS, Note, compare, notes_frame
from core_eval.report.errors import ReportError
from core_eval.report.readers import load_runs, uniquify_names
from core_eval.report.retention import KEEP, RETENTION_COLUMNS, retention_table, sparse_rows
from core_eval.report.run import Run
from core_eval.report.speed import read_speed
from core_eval.report.tables import (
    _primary_rows,
    causal_rows,
    causal_table,
    curves_table,
    leaderboard,
    primary_metrics,
    speed_table,
)
from core_eval.report.verdict import verdict_table

RUN_COLUMNS = ["run", "label", "model", "is_baseline", "compared_to", "source", "harness_model", "variant", "kind",
               "rule", "n_heads", "frac_heads", "selection", "heads", "tasks", "timestamp", "path"]


@dataclass
class Report:
    """Everything a report shows, as DataFrames (and PNG figures). ``write()`` saves it."""

    title: str
    runs: list[Run]
    labels: dict[str, str]
    baseline_of: dict[str, Run | None]
    runs_table: pd.DataFrame
    comparison: pd.DataFrame
    causal: pd.DataFrame
    curves: pd.DataFrame
    verdict: pd.DataFrame
    leaderboard: pd.DataFrame
    notes: pd.DataFrame
    speed: pd.DataFrame | None = None
    primary: dict = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    sections: dict[str, pd.DataFrame] = field(default_factory=dict)
    about: dict[str, str] = field(default_factory=dict)
    #: the paired samples behind each comparison row, ``{(run, task, metric, filter): Pairing}``
    pairs: dict = field(default_factory=dict)
    #: the sparse retention verdict (:mod:`~core_eval.report.retention`): does hybrid sparse attention keep
    #: >= ``params["keep"]`` of the baseline, and CoRe vs random full heads at each size
    retention: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RETENTION_COLUMNS))

    def add_section(self, name: str, table: pd.DataFrame, about: str = "", figure: bytes | None = None) -> None:
        """Add a table (and optionally a PNG figure) of your own, e.g. head scores from a spec."""
        self.sections[name] = table
        self.about[name] = about
        if figure is not None:
            self.figures[name] = figure

    def tables(self) -> dict[str, pd.DataFrame]:
        """Name -> table, in report order (each is one CSV)."""
        out = {"verdict": self.verdict, "retention": self.retention, "leaderboard": self.leaderboard, "comparison": self.comparison,
               "causal": self.causal, "curves": self.curves, **self.sections}
        if self.speed is not None:
            out["speed"] = self.speed
        out["runs"] = self.runs_table
        out["notes"] = self.notes
        return out

    def run(self, name_or_label: str, model: str | None = None) -> Run:
        """The run with this name or label (``model``: a model name to pick among equal labels)."""
        hits = [r for r in self.runs if name_or_label in (r.name, self.labels[r.name])
                and (model is None or model in (r.model, r.model_short))]
        if len(hits) != 1:
            raise KeyError(f"{name_or_label!r}: {len(hits)} runs match" + ("" if hits else
                           f"; labels: {sorted(set(self.labels.values()))}"))
        return hits[0]

    def to_markdown(self, plot_dir: str | None = "plots") -> str:
        from core_eval.report.writers import render_markdown

        return render_markdown(self, plot_dir=plot_dir)

    def to_html(self) -> str:
        from core_eval.report.writers import render_html

        return render_html(self)

    def write(self, outdir: str | os.PathLike, formats: Iterable[str] = ("md", "csv", "html")) -> Path:
        from core_eval.report.writers import write_report

        return write_report(self, outdir, formats=formats)


def display_labels(runs: list[Run]) -> dict[str, str]:
    """Run name -> readable label, unique per model (the timestamp is added where two runs collide)."""
    labels = {r.name: r.label for r in runs}
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.model, r.label), []).append(r)
    for rs in groups.values():
        if len(rs) > 1:
            for r in rs:
                labels[r.name] = f"{r.label} @{r.timestamp or r.name}"
    return labels


def _runs_table(runs: list[Run], labels: dict, baseline_of: dict, plan) -> pd.DataFrame:
    rows = []
    for r in runs:
        iv = r.intervention
        b = baseline_of.get(r.name)
        rows.append({
            "run": r.name, "label": labels[r.name], "model": r.model, "is_baseline": b is None,
            "compared_to": ", ".join(x.name for x, _ in plan.groups(r)) if b is not None else "", "source": r.source, "harness_model": iv.harness_model,
            "variant": iv.variant or "", "kind": iv.kind or "", "rule": iv.rule, "n_heads": iv.n_heads,
            "frac_heads": iv.frac_heads if iv.frac_heads is not None else math.nan,
            "selection": json.dumps(iv.selection, sort_keys=True) if iv.selection else "",
            "heads": ";".join(f"{l}:{h}" for l, h in iv.heads), "tasks": " ".join(r.tasks),
            "timestamp": r.timestamp, "path": str(r.path),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def build_report(
    runs: Iterable[str | os.PathLike | Run],
    baselines: Iterable[str | os.PathLike | Run] | None = None,
    *,
    speed: str | os.PathLike | pd.DataFrame | None = None,
    metrics: Iterable[str] | dict | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
    title: str | None = None,
    source: str = "auto",
    all_results: bool = True,
    specs: Iterable[str | os.PathLike] | None = None,
    keep: float = KEEP,
) -> Report:
    """Read runs, compare each against its model's baseline, build tables and figures.

    ``runs`` / ``baselines``: RUN paths (lm-eval output folders or results files, VLMEvalKit work
    dirs; ``PATH@TIMESTAMP`` allowed) or :class:`Run` objects. ``speed``: a speed file
    (:mod:`core_eval.report.speed`) or its DataFrame. ``metrics``: primary-metric overrides
    (``"task=metric"`` or ``"metric"``). ``n_boot``, ``seed``, ``alpha``: paired statistics.
    ``all_results``: kept for old callers (every results file is read by default; ``False`` reads
    the newest per folder). ``specs``: head spec files to show (RAM heatmap, heads table, RAM vs
    causal effect), see :func:`~core_eval.report.spec_sections.add_spec_sections`. ``keep``: the share
    of the baseline a hybrid sparse attention run must keep, in (0, 1] (:mod:`~core_eval.report.retention`).
    """
    if n_boot < 1:
        raise ReportError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ReportError(f"alpha must be in (0, 1), got {alpha}")
    if not isinstance(keep, numbers.Real) or isinstance(keep, bool) or not 0 < keep <= 1:
        raise ReportError(f"keep (--keep) must be in (0, 1], got {keep!r}")
    kw = {"source": source, "all_results": all_results}
    base_runs = load_runs(list(baselines or []), **kw)
    base_paths = {Path(b.path).resolve() for b in base_runs}
    other = [r for r in load_runs(list(runs), **kw) if Path(r.path).resolve() not in base_paths]
    if not other and not base_runs:
        raise ReportError("no runs given")
    uniquify_names(base_runs + other)
    plan = assign_baselines(other, base_runs)
    notes = list(plan.notes)
    variants = plan.variants
    all_runs = list(plan.baselines) + variants
    for r in all_runs:
        notes += [Note("warning" if "ignoring" in n or "unknown" in n else "info", n, r.name) for n in r.notes]
    labels = display_labels(all_runs)
    baseline_of: dict[str, Run | None] = {b.name: None for b in plan.baselines}
    tables, pairs = [], {}
    for v in variants:
        groups = plan.groups(v)
        baseline_of[v.name] = groups[0][0]
        for b, tasks in groups:
            c = compare(v, b, n_boot=n_boot, seed=seed, alpha=alpha, tasks=tasks)
            tables.append(c.table)
            notes += c.notes
            pairs.update(c.pairs)
    frames = [t for t in tables if len(t)]
    comparison = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)
    if len(comparison):
        comparison["label"] = comparison.run.map(labels)
    if not variants:
        notes.append(Note("info", "only baselines given: nothing to compare"))
    primary = primary_metrics(all_runs, metrics)
    stat_kw = {"n_boot": n_boot, "seed": seed, "alpha": alpha}
    causal, n1 = causal_table(comparison, primary, pairs, **stat_kw)
    verdict = verdict_table(causal_rows(comparison, primary), all_runs, **stat_kw)
    retention = retention_table(sparse_rows(comparison, primary), all_runs, keep=keep, **stat_kw)
    by_model = {b.model: b for b in plan.baselines}
    curves = curves_table(comparison, all_runs, by_model, primary, pairs, **stat_kw)
    board, n2 = leaderboard(all_runs, labels, comparison, primary, baseline_of)
    notes += n1 + n2
    speed_df = None
    if speed is not None:
        sp = speed if isinstance(speed, pd.DataFrame) else read_speed(speed)
        speed_df, n3 = speed_table(sp, all_runs, labels, comparison, baseline_of, primary)
        notes += n3
    figures = {}
    primary_rows = _primary_rows(comparison, primary)
    for name, fn, df in (("deltas", plots.deltas_plot, primary_rows), ("causal", plots.causal_plot, causal),
                         ("curves", plots.curves_plot, curves), ("speed", plots.speed_plot, speed_df)):
        png = fn(df) if df is not None else None
        if png:
            figures[name] = png
    nf = notes_frame(notes)
    for col in ("run", "baseline"):
        nf[col] = nf[col].map(lambda x: labels.get(x, x) if x else x)
    report = Report(
        title=title or "core-eval report", runs=all_runs, labels=labels, baseline_of=baseline_of,
        runs_table=_runs_table(all_runs, labels, baseline_of, plan), comparison=comparison, causal=causal,
        curves=curves, verdict=verdict, retention=retention, pairs=pairs,
        leaderboard=board, notes=nf, speed=speed_df, primary=primary, figures=figures,
        params={"n_boot": n_boot, "seed": seed, "alpha": alpha, "keep": keep, "pairing": "task, filter, doc_id, prompt_hash",
                "primary_metrics": {t: f"{m} ({f})" for t, (m, f) in primary.items()}},
    )
    if specs:
        from core_eval.report.spec_sections import add_spec_sections

        add_spec_sections(report, list(specs))
    return report
