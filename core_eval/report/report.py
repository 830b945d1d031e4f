"""Assemble a report: assign baselines, compare, derive the tables and figures.

Baselines: every run is compared against the baseline of its own model (matched on the recorded
``name_or_path``). Baselines passed explicitly come first (one per model); models without one take
the unmodified run among the RUNs (``heads=none`` or a plain ``hf`` / ``hf-multimodal`` run), which
must then be unique. Runs of different models are never compared with each other.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from core_eval.report import plots
from core_eval.report.comparison import COMPARISON_COLUMNS, Note, compare, notes_frame
from core_eval.report.errors import MismatchError, MissingBaselineError, ReportError
from core_eval.report.readers import load_runs, uniquify_names
from core_eval.report.run import Run
from core_eval.report.speed import read_speed
from core_eval.report.tables import _primary_rows, causal_table, curves_table, leaderboard, primary_metrics, speed_table

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
    leaderboard: pd.DataFrame
    notes: pd.DataFrame
    speed: pd.DataFrame | None = None
    primary: dict = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    sections: dict[str, pd.DataFrame] = field(default_factory=dict)
    about: dict[str, str] = field(default_factory=dict)

    def add_section(self, name: str, table: pd.DataFrame, about: str = "", figure: bytes | None = None) -> None:
        """Add a table (and optionally a PNG figure) of your own, e.g. head scores from a spec."""
        self.sections[name] = table
        self.about[name] = about
        if figure is not None:
            self.figures[name] = figure

    def tables(self) -> dict[str, pd.DataFrame]:
        """Name -> table, in report order (each is one CSV)."""
        out = {"leaderboard": self.leaderboard, "comparison": self.comparison, "causal": self.causal,
               "curves": self.curves, **self.sections}
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


def assign_baselines(runs: list[Run], baselines: list[Run]) -> tuple[dict[str | None, Run], list[Run], list[Note]]:
    """(model -> baseline, runs to compare, notes). Raises on ambiguous or missing baselines."""
    notes, by_model = [], {}
    for b in baselines:
        if b.model in by_model:
            raise MismatchError(f"two baselines for model {b.model}: {by_model[b.model].name} and {b.name}; "
                                f"pass one --baseline per model")
        by_model[b.model] = b
        if not b.is_baseline:
            notes.append(Note("warning", f"baseline {b.name} is not an unmodified model ({b.label}); "
                                         "deltas are relative to it", baseline=b.name))
    chosen = {id(b) for b in baselines}
    auto: dict[str | None, list[Run]] = {}
    for r in runs:
        if r.is_baseline and r.model not in by_model:
            auto.setdefault(r.model, []).append(r)
    for model, rs in auto.items():
        if len(rs) > 1:
            raise MismatchError(f"several unmodified runs of model {model}: {', '.join(r.name for r in rs)}; "
                                f"choose the baseline with --baseline RUN")
        by_model[model] = rs[0]
        chosen.add(id(rs[0]))
        if baselines:
            notes.append(Note("info", f"baseline for model {model} taken from the runs: {rs[0].name}",
                              baseline=rs[0].name))
    variants = [r for r in runs if id(r) not in chosen]
    for v in variants:
        if v.model in by_model:
            continue
        if (v.model is None or None in by_model) and len(by_model) == 1:
            continue  # unrecorded model: the only baseline there is (noted in compare)
        if not by_model:
            raise MissingBaselineError(
                f"no baseline: none of the runs is an unmodified model (core_hf heads=none, or a plain hf / "
                f"hf-multimodal run). Pass one with --baseline RUN (run {v.name} is model {v.model})")
        raise MissingBaselineError(
            f"no baseline for model {v.model} (run {v.name}); baselines are for "
            f"{', '.join(str(m) for m in by_model)}. Runs of different models are never compared: pass a "
            f"baseline of this model with --baseline")
    return by_model, variants, notes


def _baseline_for(v: Run, by_model: dict) -> Run:
    if v.model in by_model:
        return by_model[v.model]
    return next(iter(by_model.values()))


def _runs_table(runs: list[Run], labels: dict, baseline_of: dict) -> pd.DataFrame:
    rows = []
    for r in runs:
        iv = r.intervention
        b = baseline_of.get(r.name)
        rows.append({
            "run": r.name, "label": labels[r.name], "model": r.model, "is_baseline": b is None,
            "compared_to": b.name if b is not None else "", "source": r.source, "harness_model": iv.harness_model,
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
    all_results: bool = False,
) -> Report:
    """Read runs, compare each against its model's baseline, build tables and figures.

    ``runs`` / ``baselines``: RUN paths (lm-eval output folders or results files, VLMEvalKit work
    dirs; ``PATH@TIMESTAMP`` allowed) or :class:`Run` objects. ``speed``: a speed file
    (:mod:`core_eval.report.speed`) or its DataFrame. ``metrics``: primary-metric overrides
    (``"task=metric"`` or ``"metric"``). ``n_boot``, ``seed``, ``alpha``: paired bootstrap.
    """
    if n_boot < 1:
        raise ReportError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ReportError(f"alpha must be in (0, 1), got {alpha}")
    kw = {"source": source, "all_results": all_results}
    base_runs = load_runs(list(baselines or []), **kw)
    base_paths = {Path(b.path).resolve() for b in base_runs}
    other = [r for r in load_runs(list(runs), **kw) if Path(r.path).resolve() not in base_paths]
    if not other and not base_runs:
        raise ReportError("no runs given")
    uniquify_names(base_runs + other)
    by_model, variants, notes = assign_baselines(other, base_runs)
    all_runs = list(by_model.values()) + variants
    for r in all_runs:
        notes += [Note("warning" if "ignoring" in n or "unknown" in n else "info", n, r.name) for n in r.notes]
    labels = display_labels(all_runs)
    baseline_of: dict[str, Run | None] = {b.name: None for b in by_model.values()}
    tables = []
    for v in variants:
        b = _baseline_for(v, by_model)
        baseline_of[v.name] = b
        c = compare(v, b, n_boot=n_boot, seed=seed, alpha=alpha)
        tables.append(c.table)
        notes += c.notes
    frames = [t for t in tables if len(t)]
    comparison = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)
    if len(comparison):
        comparison["label"] = comparison.run.map(labels)
    if not variants:
        notes.append(Note("info", "only baselines given: nothing to compare"))
    primary = primary_metrics(all_runs, metrics)
    causal, n1 = causal_table(comparison, primary)
    curves = curves_table(comparison, all_runs, by_model, primary)
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
    return Report(
        title=title or "core-eval report", runs=all_runs, labels=labels, baseline_of=baseline_of,
        runs_table=_runs_table(all_runs, labels, baseline_of), comparison=comparison, causal=causal, curves=curves,
        leaderboard=board, notes=nf, speed=speed_df, primary=primary, figures=figures,
        params={"n_boot": n_boot, "seed": seed, "alpha": alpha, "pairing": "task, filter, doc_id, prompt_hash",
                "primary_metrics": {t: f"{m} ({f})" for t, (m, f) in primary.items()}},
    )
