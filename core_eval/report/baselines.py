"""Which baseline each run is compared against: one baseline per (model, harness, task).

A run pairs, task by task, with the unmodified run of the same model and harness that ran that
task (the task's sample key, :mod:`~core_eval.report.sample_keys`), so two runs of one model whose
baselines ran different tasks share a report, each task against its own baseline. Baselines
passed explicitly come first; the others are the unmodified runs among the RUNs (``heads=none``
or a plain ``hf`` / ``hf-multimodal`` run). Two candidates for one (model, harness, task) are an
error naming both. A task with no baseline in the run's harness takes the baseline of another
harness on the same sample key (paired on the probe sample id, with a note). Runs of different
models are never compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core_eval.report.comparison import Note
from core_eval.report.errors import MismatchError, MissingBaselineError
from core_eval.report.run import Run


@dataclass
class BaselinePlan:
    """``baselines``: the runs used as baselines; ``variants``: the runs compared;
    ``of[run name][task]``: the baseline of each compared task; ``notes``."""

    baselines: list[Run]
    variants: list[Run]
    of: dict[str, dict[str, Run]] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)

    def groups(self, run: Run) -> list[tuple[Run, list[str]]]:
        """``[(baseline, tasks)]`` for one compared run, the baseline with most tasks first."""
        by: dict[int, tuple[Run, list[str]]] = {}
        for task, b in self.of.get(run.name, {}).items():
            by.setdefault(id(b), (b, []))[1].append(task)
        return sorted(by.values(), key=lambda x: -len(x[1]))


def _index(runs: list[Run], what: str) -> dict[tuple, Run]:
    idx: dict[tuple, Run] = {}
    for b in runs:
        for t in b.tasks:
            key = (b.model, b.source, t)
            if key in idx and idx[key] is not b:
                if what == "explicit":
                    raise MismatchError(f"two baselines for model {b.model} ({b.source}) on task {t}: "
                                        f"{idx[key].name} and {b.name}; pass one --baseline per model, harness "
                                        "and task")
                raise MismatchError(f"several unmodified runs of model {b.model} ({b.source}) ran task {t}: "
                                    f"{idx[key].name}, {b.name}; choose the baseline with --baseline RUN")
            idx[key] = b
    return idx


def assign_baselines(runs: list[Run], explicit: list[Run]) -> BaselinePlan:
    """Assign a baseline to every (run, task); raises on ambiguous or missing baselines (see the module doc)."""
    notes: list[Note] = []
    for b in explicit:
        if not b.is_baseline:
            notes.append(Note("warning", f"baseline {b.name} is not an unmodified model ({b.label}); "
                                         "deltas are relative to it", baseline=b.name))
    index = _index(explicit, "explicit")
    # unmodified runs among the RUNs are baselines for the (model, harness, task) keys not yet taken;
    # one whose keys are all taken (a rerun) is compared like any other run
    auto = [r for r in runs if r.is_baseline
            and any((r.model, r.source, t) not in index for t in r.tasks)]
    auto_index = _index(auto, "auto")
    for key, b in auto_index.items():
        if key not in index:
            index[key] = b
    chosen = list(explicit) + [b for b in auto if b not in explicit]
    if explicit:
        for b in auto:
            notes.append(Note("info", f"baseline for model {b.model} ({b.source}) taken from the runs: {b.name}",
                              baseline=b.name))
    variants = [r for r in runs if not any(r is b for b in chosen)]
    plan = BaselinePlan(chosen, variants, notes=notes)
    models = {b.model for b in chosen}
    for v in variants:
        of: dict[str, Run] = {}
        for t in v.tasks:
            b = index.get((v.model, v.source, t))
            if b is None:
                same_key = [x for (m, src, task), x in index.items() if m == v.model and task == t]
                if len({id(x) for x in same_key}) == 1:
                    b = same_key[0]
            if b is None and (v.model is None or None in models) and len(chosen) == 1 and t in chosen[0].tasks:
                b = chosen[0]  # unrecorded model: the only baseline there is (noted in compare)
            if b is not None:
                of[t] = b
        if not of:
            if not chosen:
                raise MissingBaselineError(
                    f"no baseline: none of the runs is an unmodified model (core_hf heads=none, or a plain hf / "
                    f"hf-multimodal run). Pass one with --baseline RUN (run {v.name} is model {v.model})")
            same = [b for b in chosen if b.model == v.model or v.model is None or b.model is None]
            if same:
                tasks = sorted({t for b in same for t in b.tasks})
                raise MismatchError(f"{v.name} and baseline {', '.join(b.name for b in same)} share no task: run has "
                                    f"{v.tasks or 'none'}, baseline has {tasks or 'none'}")
            raise MissingBaselineError(
                f"no baseline for model {v.model} (run {v.name}); baselines are for "
                f"{', '.join(sorted({str(b.model) for b in chosen}))}. Runs of different models are never compared: "
                f"pass a baseline of this model with --baseline")
        for t in v.tasks:
            if t not in of:
                notes.append(Note("warning", f"no baseline of model {v.model} ran this task: not compared",
                                  v.name, task=t))
        plan.of[v.name] = of
    return plan
