"""Reader for lmms-eval output folders (``lmms-eval ... --output_path DIR [--log_samples]``).

lmms-eval 0.7.3 writes ``DIR/<model_sanitized>/<date_id>_results.json`` and, with
``--log_samples``, ``<date_id>_samples_<task>.jsonl`` next to it. The results JSON has lm-eval's
layout (``results``, ``configs``, ``n-samples``, ``config``) plus ``lmms_eval_version``; a sample
row holds ``doc_id``, ``target``, ``input`` (the prompt text) and one top-level key per metric
(lmms-eval drops the doc). Every results file of the folders given is read (runs of one model
with different interventions share a folder; ``config["core_eval"]`` tells them apart).

Sample identity: for core_eval probe tasks (``configs[task].metadata.core_eval``) the key is the
probe sample id, rebuilt from the task's family, seed and knobs and the doc index
(:func:`core_eval.probes.families.probe_id`): the id lm-eval and VLMEvalKit runs of the same
samples carry. Other tasks key on a hash of the prompt text.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pandas as pd

from core_eval.report.errors import CorruptFileError, EmptyRunError
from core_eval.report.run import (
    METRIC_COLUMNS,
    SAMPLE_COLUMNS,
    Intervention,
    Run,
    empty_samples,
    iter_jsonl,
    load_json,
    normalize_model,
    short_model,
)

RESULTS_SUFFIX = "_results.json"
_STDERR_MARKS = ("_stderr",)  # also _stderr_clt, _stderr_clustered


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _float(x) -> float:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return math.nan


def _date_id(path: Path) -> str:
    return path.name[: -len(RESULTS_SUFFIX)]


def is_lmms_eval_results(path: Path) -> bool:
    """``path`` is a results JSON written by lmms-eval."""
    if not (path.is_file() and path.name.endswith(RESULTS_SUFFIX)):
        return False
    try:
        return "lmms_eval_version" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def find_lmms_results(path: str | os.PathLike) -> list[Path]:
    """Every lmms-eval results file of ``path`` (a file, a model folder or an ``--output_path``
    root, at most three levels down), oldest first per folder."""
    p = Path(path)
    if p.is_file():
        return [p] if is_lmms_eval_results(p) else []
    out: list[Path] = []
    for depth in range(3):
        for f in sorted(p.glob("/".join(["*"] * depth + [f"*{RESULTS_SUFFIX}"]))):
            if is_lmms_eval_results(f):
                out.append(f)
    return out


def _metrics(path: Path, data: dict, leaf: set[str]) -> pd.DataFrame:
    results = data.get("results")
    if not isinstance(results, dict):
        raise CorruptFileError(path, "no 'results' object: not an lmms-eval results file")
    hib = data.get("higher_is_better") or {}
    rows = []
    for task, entry in results.items():
        if not isinstance(entry, dict):
            raise CorruptFileError(path, f"results[{task!r}] is not an object")
        for key, value in entry.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            if any(mark in metric for mark in _STDERR_MARKS):
                continue
            rows.append({"task": task, "metric": metric, "filter": filt, "value": float(value),
                         "stderr": _float(entry.get(f"{metric}_stderr,{filt}")), "is_group": task not in leaf,
                         "higher_is_better": (hib.get(task) or {}).get(metric)})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def sample_key(config: dict, doc_id: int, prompt: str) -> str:
    """The probe sample id for a core_eval probe task, else a hash of the prompt text."""
    core = ((config or {}).get("metadata") or {}).get("core_eval") or {}
    if core.get("probe_family"):
        from core_eval.probes.families import PROBE_FAMILIES, probe_id

        if core["probe_family"] in PROBE_FAMILIES:
            return probe_id(core["probe_family"], int(core.get("probe_seed", 0)), dict(core.get("probe_knobs") or {}),
                            int(doc_id))
    return _sha(prompt)


def _samples(path: Path, task: str, config: dict) -> list[dict]:
    metrics = [str(m["metric"]) for m in config.get("metric_list") or [] if isinstance(m, dict) and "metric" in m]
    rows = []
    for line, r in iter_jsonl(path):
        if "doc_id" not in r:
            raise CorruptFileError(path, "sample row has no 'doc_id' (not an lmms-eval samples file?)", line=line)
        key = sample_key(config, r["doc_id"], r.get("input", ""))
        for m in metrics:
            if m in r:
                rows.append({"task": task, "filter": "none", "doc_id": str(r["doc_id"]), "prompt_hash": key,
                             "target_hash": _sha(str(r.get("target"))), "metric": m, "value": _float(r[m])})
    return rows


def read_lmms_results_file(path: str | os.PathLike) -> Run:
    """One lmms-eval results JSON (+ its samples files) -> :class:`Run` (``source="lmms_eval"``)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or "lmms_eval_version" not in data:
        raise CorruptFileError(path, "expected an lmms-eval results file (a JSON object with 'lmms_eval_version')")
    configs = data.get("configs") or {}
    results = data.get("results") or {}
    leaf = set(configs) or {t for t in results if t not in (data.get("group_subtasks") or {})}
    config = data.get("config") or {}
    summary = config.get("core_eval") if isinstance(config.get("core_eval"), dict) else None
    model = (summary or {}).get("model", {}).get("name_or_path") or data.get("model_name")
    date_id = _date_id(path)
    tasks = sorted(leaf & set(results)) or sorted(leaf)
    rows, with_samples = [], set()
    for task in tasks:
        sfile = path.parent / f"{date_id}_samples_{task}.jsonl"
        if sfile.is_file():
            rows += _samples(sfile, task, configs.get(task) or {})
            with_samples.add(task)
    n_samples = data.get("n-samples") or {}
    task_settings = {t: {"version": (data.get("versions") or {}).get(t), "num_fewshot": (data.get("n-shot") or {}).get(t),
                         "n_original": (n_samples.get(t) or {}).get("original"),
                         "n_effective": (n_samples.get(t) or {}).get("effective"),
                         "aggregation": {str(m["metric"]): m.get("aggregation", "mean") if isinstance(
                             m.get("aggregation", "mean"), str) else "custom"
                             for m in (configs.get(t) or {}).get("metric_list") or [] if isinstance(m, dict)}}
                     for t in tasks}
    settings = {"harness": f"lmms-eval {data.get('lmms_eval_version')}", "model_type": config.get("model"),
                "limit": config.get("limit"), "gen_kwargs": config.get("gen_kwargs") or {},
                "chat_template_sha": data.get("chat_template_sha"),
                "system_instruction_sha": data.get("system_instruction_sha"),
                "model_args": config.get("model_args")}
    return Run(
        name=f"{short_model(model)}@{date_id}", source="lmms_eval", path=path, model=normalize_model(model),
        intervention=Intervention(summary, str(config.get("model", ""))), metrics=_metrics(path, data, leaf),
        samples=pd.DataFrame(rows, columns=SAMPLE_COLUMNS) if rows else empty_samples(), settings=settings,
        task_settings=task_settings, tasks=tasks,
        groups={g: list(s) for g, s in (data.get("group_subtasks") or {}).items() if isinstance(s, list)},
        tasks_with_samples=with_samples, timestamp=date_id, notes=[],
    )


def read_lmms_eval(path: str | os.PathLike) -> list[Run]:
    """All runs (results files) ``path`` stands for."""
    files = find_lmms_results(path)
    if not files:
        raise EmptyRunError(f"{path}: no lmms-eval results (OUTPUT_PATH/<model>/<date>_results.json)")
    return [read_lmms_results_file(f) for f in files]
