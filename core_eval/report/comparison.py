"""Compare one run against its baseline, per task, metric and filter.

Per-sample pairing is on ``(task, filter, doc_id, prompt_hash)`` (lm-eval's ``doc_hash`` is not
stable for image tasks). Only pairs are compared; every sample left out is counted and the reason
given in a :class:`Note`: different ``--limit``, a doc only one run has, same doc with a different
prompt (chat template / few-shot / prompt changed), a different target. When a shared task pairs
nothing the comparison is refused (:class:`NothingPairsError`).

Scores (``baseline``, ``score``, ``delta``) are means over the paired samples, so the delta and
its CI describe the same samples; the harness's own numbers are kept as ``*_reported``. Without
per-sample logs, for group rows and for metrics whose aggregate is not a per-sample mean, the
reported aggregates are compared and ``ci_*`` / ``p_value`` stay empty (``stats`` says why).
CIs: Newcombe's paired score interval for 0/1 metrics, the paired bootstrap otherwise (``test``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from core_eval.report.errors import MismatchError, NothingPairsError
from core_eval.report.run import Run
from core_eval.report.stats import is_binary, mcnemar_exact, paired_ci

NOTE_COLUMNS = ["level", "run", "baseline", "task", "message", "n_dropped"]

COMPARISON_COLUMNS = [
    "model", "harness", "task", "metric", "filter", "label", "run", "baseline_run", "variant", "kind", "rule", "n_heads",
    "frac_heads", "is_group", "n", "n_dropped", "baseline", "score", "delta", "rel_delta", "ci_low", "ci_high",
    "p_value", "test", "n_lost", "n_gained", "baseline_reported", "score_reported", "higher_is_better", "stats",
]

_SETTINGS = {
    "limit": "--limit", "gen_kwargs": "generation settings (--gen_kwargs)", "model_dtype": "dtype",
    "chat_template_sha": "chat template (--apply_chat_template)", "system_instruction_sha": "--system_instruction",
    "fewshot_as_multiturn": "--fewshot_as_multiturn",
}


@dataclass
class Note:
    """A thing the reader should know: what was not compared, and why."""

    level: str  # "warning" | "info"
    message: str
    run: str = ""
    baseline: str = ""
    task: str = ""
    n_dropped: int = 0

    def as_row(self) -> dict:
        return {k: v for k, v in asdict(self).items()}


def notes_frame(notes: list[Note]) -> pd.DataFrame:
    seen, rows = set(), []
    for n in notes:
        key = (n.level, n.run, n.baseline, n.task, n.message)
        if key not in seen:
            seen.add(key)
            rows.append(n.as_row())
    return pd.DataFrame(rows, columns=NOTE_COLUMNS)


@dataclass
class Comparison:
    """Result of :func:`compare`: a table (``COMPARISON_COLUMNS``), the notes, and the paired values
    behind each row with a CI (``pairs[(run, task, metric, filter)]``), for pooling over seeds."""

    table: pd.DataFrame
    notes: list[Note]
    pairs: dict = None

    def __post_init__(self):
        if self.pairs is None:
            self.pairs = {}


@dataclass
class Pairing:
    """Paired values of one (task, filter, metric) and the counts of what was left out."""

    doc_ids: np.ndarray
    baseline: np.ndarray
    variant: np.ndarray
    only_baseline: int = 0
    only_variant: int = 0
    prompt_differs: int = 0
    target_differs: int = 0
    missing_value: int = 0
    duplicates: int = 0

    @property
    def n(self) -> int:
        return int(self.baseline.size)

    @property
    def n_dropped(self) -> int:
        return (self.only_baseline + self.only_variant + 2 * self.prompt_differs + 2 * self.target_differs
                + self.missing_value)

    def reasons(self) -> str:
        parts = []
        if self.only_baseline:
            parts.append(f"{self.only_baseline} only in the baseline")
        if self.only_variant:
            parts.append(f"{self.only_variant} only in the run")
        if self.prompt_differs:
            parts.append(f"{self.prompt_differs} docs with the same doc_id but a different prompt hash "
                         "(prompt, chat template or few-shot setting changed?)")
        if self.target_differs:
            parts.append(f"{self.target_differs} docs with a different target")
        if self.missing_value:
            parts.append(f"{self.missing_value} samples without a value")
        return "; ".join(parts)


def _dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    key = ["doc_id", "prompt_hash"]
    dup = int(df.duplicated(key).sum())
    if dup:
        df = df.groupby(key, as_index=False, sort=False).agg(value=("value", "mean"),
                                                             target_hash=("target_hash", "first"))
    return df, dup


def pair_samples(baseline: pd.DataFrame, variant: pd.DataFrame, *, on_prompt: bool = True) -> Pairing:
    """Pair two runs' sample rows of one (task, filter, metric) on ``doc_id`` + ``prompt_hash``.

    ``on_prompt=False`` pairs on the probe sample id alone (``doc_id``): runs of two harnesses
    render (and hash) the same probe sample's prompt and target in their own formats.
    """
    cols = ["doc_id", "prompt_hash", "target_hash", "value"]
    baseline, variant = baseline[cols], variant[cols]
    if not on_prompt:
        baseline, variant = (x.assign(prompt_hash="", target_hash="") for x in (baseline, variant))
    b, dup_b = _dedupe(baseline)
    v, dup_v = _dedupe(variant)
    m = b.merge(v, on=["doc_id", "prompt_hash"], how="outer", suffixes=("_b", "_v"), indicator=True, sort=False)
    left = m[m["_merge"] == "left_only"]
    right = m[m["_merge"] == "right_only"]
    both = m[m["_merge"] == "both"]
    prompt_docs = set(left.doc_id) & set(right.doc_id)
    target_bad = both["target_hash_b"] != both["target_hash_v"]
    both = both[~target_bad]
    nan = both["value_b"].isna() | both["value_v"].isna()
    good = both[~nan]
    try:
        order = np.argsort(good["doc_id"].astype(int).values, kind="stable")
    except (TypeError, ValueError):
        order = np.argsort(good["doc_id"].values.astype(str), kind="stable")
    good = good.iloc[order]
    return Pairing(
        doc_ids=good["doc_id"].to_numpy(), baseline=good["value_b"].to_numpy(float),
        variant=good["value_v"].to_numpy(float),
        only_baseline=int((~left.doc_id.isin(prompt_docs)).sum()),
        only_variant=int((~right.doc_id.isin(prompt_docs)).sum()),
        prompt_differs=len(prompt_docs), target_differs=int(target_bad.sum()),
        missing_value=int(nan.sum()), duplicates=dup_b + dup_v,
    )


def _mean_is_aggregate(run: Run, task: str, metric: str, filt: str) -> bool:
    """Whether the reported aggregate is the mean of the logged per-sample values."""
    agg = (run.task_settings.get(task) or {}).get("aggregation", {}).get(metric)
    if agg is not None and agg != "mean":
        return False
    rep = run.score(task, metric, filt)
    s = run.samples
    vals = s[(s.task == task) & (s.metric == metric) & (s["filter"] == filt)]["value"]
    if math.isnan(rep) or vals.empty or vals.isna().all():
        return not vals.empty and not vals.isna().all()
    return abs(float(vals.mean()) - rep) <= 1e-6 * max(1.0, abs(rep))


def settings_notes(run: Run, baseline: Run) -> list[Note]:
    """Differences in run settings that can make a comparison unfair."""
    notes = []
    for key, what in _SETTINGS.items():
        a, b = baseline.settings.get(key), run.settings.get(key)
        if key in run.settings and key in baseline.settings and a != b:
            extra = " (only the samples both runs have are compared)" if key == "limit" else ""
            notes.append(Note("warning", f"{what} differs: baseline {a!r}, run {b!r}{extra}", run.name, baseline.name))
    for task in sorted(set(run.tasks) & set(baseline.tasks)):
        ts_r, ts_b = run.task_settings.get(task, {}), baseline.task_settings.get(task, {})
        for key, what in (("version", "task version"), ("num_fewshot", "num_fewshot")):
            if ts_r.get(key) != ts_b.get(key) and key in ts_r and key in ts_b:
                notes.append(Note("warning", f"{what} differs: baseline {ts_b.get(key)!r}, run {ts_r.get(key)!r}",
                                  run.name, baseline.name, task))
    return notes


def compare(run: Run, baseline: Run, *, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05,
            tasks: list[str] | None = None) -> Comparison:
    """Compare ``run`` against ``baseline`` (same model) on their common tasks (only ``tasks`` if given:
    the tasks this baseline is the run's baseline for). See the module doc.

    Runs of different harnesses (``source``) pair on the probe sample id alone, with a note."""
    notes: list[Note] = []
    pairs: dict = {}
    cross = run.source != baseline.source
    if cross:
        notes.append(Note("info", f"baseline from another harness ({baseline.source} vs {run.source}): samples "
                                  "paired on the probe sample id (doc_id / index) of the shared task key",
                          run.name, baseline.name))
    if run.model and baseline.model and run.model != baseline.model:
        raise MismatchError(f"{run.name} (model {run.model}) and baseline {baseline.name} (model "
                            f"{baseline.model}) are different models; give each model its own --baseline")
    if not run.model or not baseline.model:
        notes.append(Note("warning", "model not recorded for one side; compared as given", run.name, baseline.name))
    common = [t for t in run.tasks if t in set(baseline.tasks) and (tasks is None or t in tasks)]
    if not common:
        raise MismatchError(f"{run.name} and baseline {baseline.name} share no task: run has "
                            f"{run.tasks or 'none'}, baseline has {baseline.tasks or 'none'}")
    for t in run.tasks:
        if t not in common and (tasks is None or t in tasks):
            notes.append(Note("warning", "task not in the baseline: not compared", run.name, baseline.name, t))
    for t in baseline.tasks:
        if t not in set(run.tasks):
            notes.append(Note("info", "task only in the baseline: not compared", run.name, baseline.name, t))
    notes += settings_notes(run, baseline)
    groups = sorted(set(run.metrics.loc[run.metrics.is_group, "task"])
                    & set(baseline.metrics.loc[baseline.metrics.is_group, "task"]))

    iv = run.intervention
    base_row = {"model": run.model or baseline.model, "harness": run.source, "label": run.label, "run": run.name,
                "baseline_run": baseline.name, "variant": iv.variant if not iv.is_baseline else "none", "kind": iv.kind,
                "rule": iv.rule, "n_heads": iv.n_heads, "frac_heads": iv.frac_heads}
    rows = []
    rm, bm = run.metrics, baseline.metrics
    for task in common + groups:
        is_group = task in groups
        r_keys = set(map(tuple, rm.loc[rm.task == task, ["metric", "filter"]].values))
        b_keys = set(map(tuple, bm.loc[bm.task == task, ["metric", "filter"]].values))
        for metric, filt in sorted(r_keys ^ b_keys):
            side = "run" if (metric, filt) in r_keys else "baseline"
            notes.append(Note("warning", f"metric {metric} (filter {filt}) only in the {side}: not compared",
                              run.name, baseline.name, task))
        paired_note_done = False
        for metric, filt in sorted(r_keys & b_keys):
            b_rep, r_rep = baseline.score(task, metric, filt), run.score(task, metric, filt)
            hib = rm.loc[(rm.task == task) & (rm.metric == metric), "higher_is_better"]
            row = {**base_row, "task": task, "metric": metric, "filter": filt, "is_group": is_group,
                   "baseline_reported": b_rep, "score_reported": r_rep,
                   "higher_is_better": hib.iloc[0] if len(hib) else None,
                   "n": math.nan, "n_dropped": 0, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                   "test": "", "n_lost": math.nan, "n_gained": math.nan}
            reason = None
            if is_group:
                reason = "group aggregate"
            elif task not in run.tasks_with_samples or task not in baseline.tasks_with_samples:
                missing = [x.name for x in (baseline, run) if task not in x.tasks_with_samples]
                reason = "no per-sample log"
                notes.append(Note("warning", f"no per-sample log (--log_samples) for {', '.join(missing)}: "
                                  "aggregate scores compared, no CI or p-value", run.name, baseline.name, task))
            else:
                bs = baseline.samples[(baseline.samples.task == task) & (baseline.samples.metric == metric)
                                      & (baseline.samples["filter"] == filt)]
                rs = run.samples[(run.samples.task == task) & (run.samples.metric == metric)
                                 & (run.samples["filter"] == filt)]
                b_none = bs.empty or bs["value"].isna().all()
                r_none = rs.empty or rs["value"].isna().all()
                if b_none or r_none:
                    reason = "no per-sample values"
                    if b_none != r_none:  # an aggregate-only metric on both sides needs no note
                        side = baseline.name if b_none else run.name
                        notes.append(Note("warning", f"{metric}: no numeric per-sample values in {side}; "
                                          "aggregates compared, no CI or p-value", run.name, baseline.name, task))
                else:
                    p = pair_samples(bs, rs, on_prompt=not cross)
                    if p.n == 0:
                        raise NothingPairsError(
                            f"{run.name} vs baseline {baseline.name}, task {task}: no sample pairs up on doc_id + "
                            f"prompt hash ({p.reasons()}). Were both run with the same task version and prompt "
                            f"settings (--apply_chat_template, --num_fewshot, --system_instruction)?")
                    if (p.n_dropped or p.duplicates) and not paired_note_done:
                        paired_note_done = True
                        msg = (f"compared the {p.n} samples both runs share; left out {p.n_dropped}: {p.reasons()}"
                               if p.n_dropped else "")
                        if p.duplicates:
                            msg = (msg + "; " if msg else "") + f"{p.duplicates} duplicate rows averaged per doc"
                        notes.append(Note("warning", msg, run.name, baseline.name, task, p.n_dropped))
                    if not (_mean_is_aggregate(run, task, metric, filt)
                            and _mean_is_aggregate(baseline, task, metric, filt)):
                        reason = "aggregate is not a per-sample mean"
                        notes.append(Note("info", f"{metric}: the reported aggregate is not the mean of the "
                                          "per-sample values; aggregates compared, no CI or p-value",
                                          run.name, baseline.name, task))
                    else:
                        b_mean, r_mean = float(p.baseline.mean()), float(p.variant.mean())
                        lo, hi, method = paired_ci(p.baseline, p.variant, n_boot=n_boot, seed=seed, alpha=alpha)
                        row.update(n=p.n, n_dropped=p.n_dropped, baseline=b_mean, score=r_mean,
                                   delta=r_mean - b_mean, ci_low=lo, ci_high=hi, test=method, stats="paired")
                        pairs[(run.name, task, metric, filt)] = p
                        if is_binary(p.baseline) and is_binary(p.variant):
                            mc = mcnemar_exact(p.baseline, p.variant)
                            row.update(p_value=mc.p_value, test=f"{method}+mcnemar", n_lost=mc.n_lost,
                                       n_gained=mc.n_gained)
            if reason is not None:
                row.update(baseline=b_rep, score=r_rep, delta=r_rep - b_rep, stats=f"aggregate only ({reason})")
            row["rel_delta"] = row["delta"] / row["baseline"] if row["baseline"] else math.nan
            rows.append(row)
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return Comparison(table, notes, pairs)
