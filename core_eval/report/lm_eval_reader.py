"""Reader for lm-eval output folders (``--output_path DIR [--log_samples]``).

lm-eval 0.4.x writes ``DIR/<model_sanitized>/results_<ts>.json`` and, with ``--log_samples``,
``samples_<task>_<ts>.jsonl`` next to it (one row per document and filter). A RUN may be the
``--output_path`` root, a model folder, a parent of several roots, or one results file; append
``@TIMESTAMP`` (a prefix of ``<ts>``) to a folder to pick one results file. Runs that differ only
in their mask land in the same model folder (lm-eval's own layout), so **every** results file of
every folder is read, and each is one run, identified by the intervention it recorded in
``config["core_eval"]`` (absent for plain ``hf`` / ``hf-multimodal`` runs: a baseline), not by its
folder. ``all_results=False`` restores the old newest-file-per-folder behaviour (with a note).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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

_SKIP_KEYS = {"alias", "name", "sample_len", "sample_count", " "}
_MAX_DEPTH = 3


def _timestamp(path: Path) -> str:
    return path.name[len("results_"):-len(".json")] if path.name.startswith("results_") else ""


def split_run_arg(arg: str | os.PathLike) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH@TIMESTAMP`` -> (path, timestamp prefix or None)."""
    s = str(arg)
    if os.path.exists(s) or "@" not in s:
        return Path(s), None
    head, ts = s.rsplit("@", 1)
    return Path(head), (ts or None)


def result_folders(root: Path) -> list[Path]:
    """Folders at most ``_MAX_DEPTH`` levels below ``root`` that hold ``results_*.json``."""
    found = []
    root_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).parts) - root_depth >= _MAX_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        if any(f.startswith("results_") and f.endswith(".json") for f in filenames):
            found.append(Path(dirpath))
    return found


def find_results(path: str | os.PathLike, *, timestamp: str | None = None,
                 all_results: bool = True) -> tuple[list[Path], list[str]]:
    """Results files a RUN argument stands for, and notes on what was passed over."""
    p, ts = split_run_arg(path)
    timestamp = timestamp or ts
    if not p.exists():
        raise EmptyRunError(f"{p}: no such file or folder")
    if p.is_file():
        if p.name.startswith("samples_") and p.suffix == ".jsonl":
            raise EmptyRunError(f"{p} is a per-sample log; pass its results_<ts>.json or the folder holding it")
        return [p], []
    folders = result_folders(p)
    if not folders:
        raise EmptyRunError(
            f"{p}: no lm-eval results_*.json in this folder or its subfolders (lm-eval writes "
            f"OUTPUT_PATH/<model>/results_<timestamp>.json for --output_path OUTPUT_PATH)")
    files, notes = [], []
    for folder in folders:
        cands = sorted(folder.glob("results_*.json"), key=lambda f: (_timestamp(f), f.stat().st_mtime))
        if timestamp:
            chosen = [f for f in cands if _timestamp(f).startswith(timestamp)]
            if not chosen:
                raise EmptyRunError(f"{folder}: no results file with timestamp {timestamp!r}; "
                                    f"available: {', '.join(_timestamp(f) for f in cands)}")
            if len(chosen) > 1:
                raise EmptyRunError(f"{folder}: timestamp {timestamp!r} matches {len(chosen)} results files "
                                    f"({', '.join(_timestamp(f) for f in chosen)}); give more of it")
            files.extend(chosen)
        elif all_results:
            files.extend(cands)
        else:
            files.append(cands[-1])
            if len(cands) > 1:
                notes.append(f"{folder}: {len(cands)} results files; using the newest ({_timestamp(cands[-1])}), "
                             f"ignoring {', '.join(_timestamp(f) for f in cands[:-1])} (runs that differ only in "
                             f"their mask share a folder: pass FOLDER@TIMESTAMP, the file itself, or read them all)")
    return files, notes


def _parse_model_args(args) -> dict:
    if isinstance(args, dict):
        return dict(args)
    out = {}
    for part in str(args or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _float(x) -> float:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return math.nan
    return math.nan


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _metrics_table(path: Path, data: dict, leaf: set[str]) -> pd.DataFrame:
    results = data.get("results")
    if not isinstance(results, dict):
        raise CorruptFileError(path, "no 'results' object: not an lm-eval results file")
    hib = data.get("higher_is_better") or {}
    rows = []
    for task, entry in results.items():
        if not isinstance(entry, dict):
            raise CorruptFileError(path, f"results[{task!r}] is not an object")
        for key, value in entry.items():
            if key in _SKIP_KEYS or "," not in key:
                continue
            metric, filt = key.split(",", 1)
            if "_stderr" in metric:  # also lmms-eval's *_stderr_clt / *_stderr_clustered
                continue
            v = _float(value)
            if math.isnan(v) and not isinstance(value, (int, float)):
                continue  # e.g. "N/A"
            rows.append({
                "task": task, "metric": metric, "filter": filt, "value": v,
                "stderr": _float(entry.get(f"{metric}_stderr,{filt}")),
                "is_group": task not in leaf,
                "higher_is_better": (hib.get(task) or {}).get(metric),
            })
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _read_samples(path: Path, task: str) -> tuple[list[dict], set[str]]:
    """Long rows of one samples file, and the names of metrics with non-scalar values."""
    rows, nonscalar = [], set()
    for line, r in iter_jsonl(path):
        if "doc_id" not in r:
            raise CorruptFileError(path, "sample row has no 'doc_id' (not an lm-eval samples file?)", line=line)
        names = r.get("metrics")
        if isinstance(names, dict):
            values = dict(names)
        elif isinstance(names, list):
            values = {m: r.get(m) for m in names}
        else:
            values = {}
        prompt = r.get("prompt_hash") or _sha(r.get("arguments"))
        target = r.get("target_hash") or _sha(r.get("target"))
        for m, v in values.items():
            f = _float(v)
            if math.isnan(f) and not (isinstance(v, float) and math.isnan(v)):
                nonscalar.add(m)
            rows.append({"task": task, "filter": str(r.get("filter", "none")), "doc_id": str(r["doc_id"]),
                         "prompt_hash": str(prompt), "target_hash": str(target), "metric": m, "value": f})
    return rows, nonscalar


@dataclass(frozen=True)
class Layout:
    """A harness that writes lm-eval's results JSON (lm-eval, lmms-eval): its name, version key, how
    a results file's timestamp and samples files are named, and how a samples file reads
    (``read_samples(file, task, task_config) -> (rows, names of non-scalar metrics)``)."""

    source: str
    label: str
    timestamp: Callable[[Path], str]
    samples_file: Callable[[Path, str, str], Path]
    read_samples: Callable[[Path, str, dict], tuple[list[dict], set[str]]]


LM_EVAL = Layout("lm_eval", "lm-eval", _timestamp, lambda p, task, ts: p.parent / f"samples_{task}_{ts}.jsonl",
                 lambda f, task, cfg: _read_samples(f, task))


def read_results_file(path: str | os.PathLike, layout: Layout = LM_EVAL) -> Run:
    """One results JSON (+ its samples files) of ``layout``'s harness -> :class:`Run`."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"expected a JSON object (an {layout.label} results file)")
    configs = data.get("configs") or {}
    results = data.get("results") or {}
    group_subtasks = data.get("group_subtasks") or {}
    leaf = set(configs) if configs else {t for t in results if t not in group_subtasks}
    metrics = _metrics_table(path, data, leaf)
    config = data.get("config") or {}
    summary = config.get("core_eval")
    model_args = _parse_model_args(config.get("model_args"))
    model = None
    if isinstance(summary, dict):
        model = (summary.get("model") or {}).get("name_or_path")
    model = model or model_args.get("pretrained") or data.get("model_name")
    intervention = Intervention(summary if isinstance(summary, dict) else None, str(config.get("model", "")))
    ts = layout.timestamp(path)

    notes, sample_rows, with_samples = [], [], set()
    tasks = sorted(leaf & set(results)) or sorted(leaf)
    for task in tasks:
        sfile = layout.samples_file(path, task, ts)
        if not sfile.is_file():
            continue
        rows, nonscalar = layout.read_samples(sfile, task, configs.get(task) or {})
        sample_rows.extend(rows)
        with_samples.add(task)
        for m in sorted(nonscalar):
            notes.append(f"{task}/{m}: per-sample values are not numbers (corpus-level metric); "
                         "only the aggregate is compared")
    samples = pd.DataFrame(sample_rows, columns=SAMPLE_COLUMNS) if sample_rows else empty_samples()

    n_samples = data.get("n-samples") or {}
    nshot = data.get("n-shot") or {}
    versions = data.get("versions") or {}
    task_settings = {}
    for task in tasks:
        cfg = configs.get(task) or {}
        aggs = {}
        for m in cfg.get("metric_list") or []:
            if isinstance(m, dict) and "metric" in m:
                agg = m.get("aggregation", "mean")
                aggs[str(m["metric"])] = agg if isinstance(agg, str) else "custom"
        task_settings[task] = {
            "version": versions.get(task), "num_fewshot": nshot.get(task),
            "n_original": (n_samples.get(task) or {}).get("original"),
            "n_effective": (n_samples.get(task) or {}).get("effective"),
            "aggregation": aggs,
        }
    settings = {
        "harness": f"{layout.label} {data.get(layout.source + '_version') or '?'}",
        "model_type": config.get("model"),
        "limit": config.get("limit"),
        "gen_kwargs": config.get("gen_kwargs") or {},
        "model_dtype": config.get("model_dtype"),
        "chat_template_sha": data.get("chat_template_sha"),
        "system_instruction_sha": data.get("system_instruction_sha"),
        "fewshot_as_multiturn": data.get("fewshot_as_multiturn"),
        "transformers_version": data.get("transformers_version"),
        "model_args": model_args,
    }
    return Run(
        name=f"{short_model(model)}@{ts}" if ts else f"{short_model(model)}@{path.stem}",
        source=layout.source, path=path, model=normalize_model(model), intervention=intervention,
        metrics=metrics, samples=samples, settings=settings, task_settings=task_settings, tasks=tasks,
        groups={g: list(s) for g, s in group_subtasks.items() if isinstance(s, list)},
        tasks_with_samples=with_samples, timestamp=ts, notes=notes,
    )


def read_lm_eval(path: str | os.PathLike, *, timestamp: str | None = None, all_results: bool = True) -> list[Run]:
    """All runs a RUN argument stands for (see the module doc). Notes on skipped files go to ``run.notes``."""
    files, notes = find_results(path, timestamp=timestamp, all_results=all_results)
    runs = [read_results_file(f) for f in files]
    for run in runs:
        run.notes[:0] = [n for n in notes if n.startswith(str(run.path.parent))]
    return runs
