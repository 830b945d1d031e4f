"""Attention overlays of the samples an ablation lost, as report sections (``core-eval report --overlays N``).

For each compared run that ablated heads, on each core_eval probe task, the first ``N`` samples its
baseline answered right (primary metric 1) and the run got wrong are regenerated from the task's
generator (family, knobs, evaluation seed, doc index = sample index) and drawn with
:func:`core_eval.scoring.plots.attention_overlay`: where the ablated heads attend in the
*unmodified* model, the target box outlined. This needs the model (``run.model``, loaded once per
model) and is off by default. It sits above ``report`` and ``scoring`` (it joins the two), so
neither of those imports the other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from core_eval.report.report import Report


def lost_doc_ids(report: Report, run, task: str) -> list[int]:
    """Doc ids of ``task`` that ``run``'s baseline got right and ``run`` got wrong (primary metric)."""
    metric, filt = report.primary.get(task, (None, None))
    pairing = report.pairs.get((run.name, task, metric, filt))
    if pairing is None:
        return []
    lost = (pairing.baseline >= 1) & (pairing.variant < 1)
    return sorted(int(d) for d in pairing.doc_ids[lost])


def add_overlay_sections(report: Report, n: int, *, device: str | None = None) -> list[str]:
    """Add up to ``n`` overlay sections per (run, probe task); returns their names. Runs without
    recorded heads, tasks that are not probe tasks and models that cannot load are skipped with a
    note in the section table."""
    import core_eval
    from core_eval.probes import load_probe
    from core_eval.probes.tasks import probe_tasks, resolve_probes
    from core_eval.scoring.plots import MAX_PANELS, attention_overlay

    if n <= 0:
        return []
    catalog = probe_tasks()
    models: dict[str, object] = {}
    added = []
    for run in report.runs:
        summary = run.intervention.summary or {}
        heads = [tuple(h) for h in summary.get("heads") or []]
        if not heads or report.baseline_of.get(run.name) is None or run.model is None:
            continue
        for task in sorted(set(run.tasks) & set(catalog)):
            ids = lost_doc_ids(report, run, task)[:n]
            if not ids:
                continue
            if run.model not in models:
                models[run.model] = core_eval.load(run.model, heads="none", device=device)
            loaded = models[run.model]
            family, knobs, t = resolve_probes(task)
            samples = load_probe(family, n=max(ids) + 1, seed=t.eval_seed, **knobs)
            for doc in ids:
                name = f"overlay-{report.labels.get(run.name, run.name)}-{task}-{doc}"
                name = "".join(c if c.isalnum() or c in "-_.=%" else "_" for c in name)
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "overlay.png"
                    attention_overlay(loaded.model, loaded.processor, samples[doc], heads[:MAX_PANELS], path,
                                      title=f"{report.labels.get(run.name, run.name)}: lost {task} doc {doc}")
                    png = path.read_bytes()
                table = pd.DataFrame([{"run": run.name, "task": task, "doc_id": doc, "probe_id": samples[doc].id,
                                       "question": samples[doc].question, "answer": samples[doc].answer,
                                       "heads_drawn": ";".join(f"{l}:{h}" for l, h in heads[:MAX_PANELS])}])
                report.add_section(name, table, f"A sample {report.labels.get(run.name, run.name)} lost "
                                   f"(its baseline answered it): attention of the ablated heads in the unmodified "
                                   f"model, target box outlined.", png)
                added.append(name)
    return added
