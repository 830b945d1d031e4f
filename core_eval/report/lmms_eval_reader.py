"""Reader for lmms-eval output folders (``lmms-eval ... --output_path DIR [--log_samples]``).

lmms-eval 0.7.3 writes ``DIR/<model_sanitized>/<date_id>_results.json`` and, with
``--log_samples``, ``<date_id>_samples_<task>.jsonl`` next to it. The results JSON has lm-eval's
layout (``results``, ``configs``, ``n-samples``, ``config``) plus ``lmms_eval_version``, so
:func:`~core_eval.report.lm_eval_reader.read_results_file` reads it with :data:`LMMS_EVAL`. A sample
row holds ``doc_id``, ``target``, ``input`` (the prompt text) and one top-level key per metric of
the task's ``metric_list`` (lmms-eval drops the doc). Every results file of the folders given is
read: runs of one model with different interventions share a folder, and ``config["core_eval"]``
tells them apart.

Joins: the core_eval probe tasks keep their lm-eval names, and doc ``i`` of an lmms-eval probe
task is doc ``i`` of its lm-eval twin (:mod:`core_eval.integrations.lmms_eval_tasks`), so runs of
the two harnesses pair on ``doc_id`` (:mod:`core_eval.report.comparison`).
"""

from __future__ import annotations

import os
from pathlib import Path

from core_eval.report.errors import CorruptFileError, EmptyRunError
from core_eval.report.lm_eval_reader import Layout, _float, _sha, read_results_file
from core_eval.report.run import Run, iter_jsonl

RESULTS_SUFFIX = "_results.json"
_MAX_DEPTH = 3


def _date_id(path: Path) -> str:
    return path.name[: -len(RESULTS_SUFFIX)] if path.name.endswith(RESULTS_SUFFIX) else path.stem


def is_lmms_eval_results(path: Path) -> bool:
    """``path`` is a results JSON written by lmms-eval (cheap; never raises)."""
    if not (path.is_file() and path.name.endswith(RESULTS_SUFFIX)):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            return '"lmms_eval_version"' in fh.read()
    except (OSError, UnicodeDecodeError):
        return False


def find_lmms_results(path: str | os.PathLike) -> list[Path]:
    """Every lmms-eval results file of ``path`` (a file, a model folder or an ``--output_path``
    root, up to three levels down), sorted by path."""
    p = Path(path)
    if p.is_file():
        return [p] if is_lmms_eval_results(p) else []
    if not p.is_dir():
        return []
    found = []
    for depth in range(_MAX_DEPTH):
        found += [f for f in sorted(p.glob("/".join(["*"] * depth + [f"*{RESULTS_SUFFIX}"]))) if is_lmms_eval_results(f)]
    return found


def _read_samples(path: Path, task: str, config: dict) -> tuple[list[dict], set[str]]:
    """Long rows of one lmms-eval samples file (metrics: the task's ``metric_list``)."""
    metrics = [str(m["metric"]) for m in config.get("metric_list") or [] if isinstance(m, dict) and "metric" in m]
    rows, nonscalar = [], set()
    for line, r in iter_jsonl(path):
        if "doc_id" not in r:
            raise CorruptFileError(path, "sample row has no 'doc_id' (not an lmms-eval samples file?)", line=line)
        for m in metrics:
            if m not in r:
                continue
            if not isinstance(r[m], (int, float)):
                nonscalar.add(m)
            rows.append({"task": task, "filter": "none", "doc_id": str(r["doc_id"]),
                         "prompt_hash": _sha(r.get("input")), "target_hash": _sha(r.get("target")),
                         "metric": m, "value": _float(r[m])})
    return rows, nonscalar


LMMS_EVAL = Layout("lmms_eval", "lmms-eval", _date_id,
                   lambda p, task, ts: p.parent / f"{ts}_samples_{task}.jsonl", _read_samples)


def read_lmms_eval(path: str | os.PathLike) -> list[Run]:
    """All runs (results files) ``path`` stands for."""
    files = find_lmms_results(path)
    if not files:
        raise EmptyRunError(f"{path}: no lmms-eval results (OUTPUT_PATH/<model>/<date>_results.json)")
    return [read_results_file(f, LMMS_EVAL) for f in files]
