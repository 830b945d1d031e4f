"""Reader for VLMEvalKit work dirs (written against VLMEvalKit's documented output layout).

Layout (``run.py --work-dir WORK``)::

    WORK/<model>/<eval_id>/<model>_<dataset>.xlsx      predictions: index, question, [A..D], answer, prediction
    WORK/<model>/<eval_id>/<model>_<dataset>_<judge>_result.xlsx   MCQ judge output, per-row ``hit`` (0/1)
    WORK/<model>/<eval_id>/<model>_<dataset>_score.xlsx core_eval probe datasets: per-row exact/relaxed_match
    WORK/<model>/<eval_id>/<model>_<dataset>_acc.csv   aggregate (``split``, ``Overall``, categories)
    WORK/<model>/<eval_id>/<model>_<dataset>_score.csv aggregate of Y/N and scored datasets
    WORK/<model>/<model>_<dataset>*                    links to the latest eval_id's files

``eval_id`` is ``T<yyyymmdd>_G<commit>``; older releases write straight into ``WORK/<model>/``.
Predictions may be ``.xlsx`` (needs ``openpyxl``, which VLMEvalKit installs), ``.tsv`` or ``.csv``.

A RUN may be the work dir (every model folder in it), a model folder (its own files, else its
newest eval_id folder; ``@EVAL_ID`` picks one), an eval_id folder or one prediction file.

Per run: task = the dataset's sample key (``core_grid_needle-n8`` -> ``core_grid_needle``, see
:mod:`~core_eval.report.sample_keys`; the dataset name is kept as ``task_settings[task]["harness_task"]``), per-sample metrics from VLMEvalKit's own score files (``hit``,
``exact_match``, ``relaxed_match``; computed with core_eval.probes.metrics only when there is no
score file, with a note), aggregates from ``*_acc.csv`` / ``*_score.csv`` (see
:mod:`~core_eval.report.vlmeval_scores`). Samples pair on ``index`` + a hash of the question and
options.

Intervention: VLMEvalKit records none. core_eval's VLMEvalKit integration writes
``<work_dir>/<model>/core_eval.json`` = ``{"core_eval": summary, "dtype": ..., "generation": ...}``
(the summary lm-eval gets in ``config["core_eval"]``); a bare summary object is accepted too, in
the eval_id folder or the model folder. Without it the run's intervention and model are unknown:
it is compared only against a baseline given explicitly.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import string
from pathlib import Path

import pandas as pd

from core_eval.report.errors import CorruptFileError, EmptyRunError
from core_eval.report.sample_keys import sample_key
from core_eval.report.vlmeval_scores import aggregates, own_files, per_sample
from core_eval.report.run import (
    METRIC_COLUMNS,
    SAMPLE_COLUMNS,
    Intervention,
    Run,
    empty_samples,
    load_json,
    normalize_model,
)

DATA_EXT = (".xlsx", ".tsv", ".csv")
SIDECAR = "core_eval.json"
_EVAL_ID = re.compile(r"^T\d{8}_G\w+$")
_DERIVED = re.compile(r"_(acc|score|result|auxmatch|rating|judge|judged|extract\w*|tmp|PREV|fin|eval\w*)$", re.I)
_JUDGE_HINT = ("gpt", "matching", "judge", "openai", "claude", "qwen", "llama", "deepseek", "glm")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".xlsx":
            try:
                return pd.read_excel(path, dtype={"answer": str})  # "0412" stays a code, 7 becomes "7"
            except ImportError as e:
                raise CorruptFileError(path, f"reading .xlsx needs openpyxl ({e}); pip install openpyxl "
                                             "(VLMEvalKit installs it)") from None
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype={"answer": str})
    except CorruptFileError:
        raise
    except Exception as e:  # pandas / openpyxl / zipfile parse errors
        raise CorruptFileError(path, f"cannot read this {path.suffix} table ({type(e).__name__}: {e}); the file is "
                                     "damaged or not a table: rerun VLMEvalKit for this model and dataset, or "
                                     "remove the file") from None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _data_files(folder: Path, model: str) -> list[Path]:
    return sorted(f for f in folder.iterdir()
                  if f.suffix in DATA_EXT and f.name.startswith(model + "_") and (f.is_file()))


def _prediction_stems(files: list[Path]) -> list[Path]:
    """The prediction files among a model's data files (not judge outputs or score tables)."""
    stems = {f.stem: f for f in files}
    preds = []
    for stem, f in stems.items():
        if _DERIVED.search(stem):
            continue
        parent = [t for t in stems if t != stem and stem.startswith(t + "_")]
        if parent and any(h in stem[len(max(parent, key=len)):].lower() for h in _JUDGE_HINT):
            continue
        preds.append(f)
    return preds


def is_vlmeval_dir(path: Path) -> bool:
    """Whether ``path`` looks like a VLMEvalKit work dir, model folder, eval_id folder or prediction file."""
    try:
        return bool(_locate(Path(path), None))
    except EmptyRunError:
        return False


def _model_folder_files(folder: Path, model: str, eval_id: str | None) -> tuple[Path, list[Path]] | None:
    if eval_id is None:
        own = _prediction_stems(_data_files(folder, model))
        if own:
            return folder, own
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and _EVAL_ID.match(d.name))
    if eval_id is not None:
        subs = [d for d in subs if d.name.startswith(eval_id)]
    for d in reversed(subs):
        preds = _prediction_stems(_data_files(d, model))
        if preds:
            return d, preds
    return None


def _locate(path: Path, eval_id: str | None) -> list[tuple[str, Path, list[Path]]]:
    """``[(model, folder, prediction files)]`` for a RUN path."""
    if path.is_file():
        folder = path.parent
        model = folder.parent.name if _EVAL_ID.match(folder.name) else folder.name
        if not path.name.startswith(model + "_") or path.suffix not in DATA_EXT:
            raise EmptyRunError(f"{path}: not a VLMEvalKit prediction file (<model>_<dataset>.xlsx|tsv|csv "
                                f"inside WORK_DIR/<model>/)")
        return [(model, folder, [path])]
    if not path.is_dir():
        raise EmptyRunError(f"{path}: no such file or folder")
    if _EVAL_ID.match(path.name):
        model = path.parent.name
        preds = _prediction_stems(_data_files(path, model))
        return [(model, path, preds)] if preds else []
    found = _model_folder_files(path, path.name, eval_id)
    if found:
        return [(path.name, *found)]
    out = []
    for sub in sorted(d for d in path.iterdir() if d.is_dir()):
        found = _model_folder_files(sub, sub.name, eval_id)
        if found:
            out.append((sub.name, *found))
    if not out:
        raise EmptyRunError(f"{path}: no VLMEvalKit prediction files (expected WORK_DIR/<model>/[<eval_id>/]"
                            f"<model>_<dataset>.xlsx|tsv|csv)")
    return out


def _question_hash(row: pd.Series, columns) -> str:
    parts = [str(row.get("question", ""))]
    parts += [f"{c}:{row[c]}" for c in string.ascii_uppercase if c in columns and not pd.isna(row[c])]
    if "hint" in columns and not pd.isna(row.get("hint")):
        parts.append(f"hint:{row['hint']}")
    return _sha("\n".join(parts))


def _sidecar(folder: Path, model_folder: Path) -> tuple[dict | None, dict]:
    """(intervention summary, whole record) from ``core_eval.json``; (None, {}) when absent."""
    for d in (folder, model_folder):
        f = d / SIDECAR
        if f.is_file():
            fix = ("core-vlmeval writes it when it loads the model: rerun that model, or delete the file "
                   "(the run's intervention is then unknown)")
            try:
                data = load_json(f)
            except CorruptFileError as e:
                raise CorruptFileError(f, f"{e.detail}; {fix}", line=e.line) from None
            if not isinstance(data, dict):
                raise CorruptFileError(f, f"expected a JSON object (core_eval's record of the run), got "
                                          f"{type(data).__name__}; {fix}")
            if isinstance(data.get("core_eval"), dict):
                return data["core_eval"], data
            if "variant" in data or "n_heads" in data:
                return data, {}
            raise CorruptFileError(f, f"no 'core_eval' intervention summary (an object) in this record; {fix}")
    return None, {}


def read_vlmeval(path: str | os.PathLike, *, eval_id: str | None = None) -> list[Run]:
    """Runs of a VLMEvalKit work dir / model folder / eval_id folder / prediction file (see module doc)."""
    p = Path(path)
    if not p.exists() and "@" in str(path):
        head, eval_id = str(path).rsplit("@", 1)
        p = Path(head)
    located = _locate(p, eval_id)
    if not located:
        raise EmptyRunError(f"{p}: no VLMEvalKit prediction files")
    runs = []
    for model_name, folder, preds in located:
        model_folder = folder.parent if _EVAL_ID.match(folder.name) else folder
        all_files = _data_files(folder, model_name)
        metric_rows, sample_rows, notes, task_settings, with_samples = [], [], [], {}, set()
        pred_stems = [f.stem for f in _prediction_stems(all_files)]
        names = [pf.stem[len(model_name) + 1:] for pf in preds]
        task_keys = [sample_key(n) for n in names]
        for pf, raw, key in zip(preds, names, task_keys):
            dataset = key if task_keys.count(key) == 1 else raw  # two sizes of one draw in one folder: keep both
            pred = _read_table(pf)
            missing = {"index", "prediction"} - set(pred.columns)
            if missing:
                raise CorruptFileError(pf, f"prediction file lacks column(s) {sorted(missing)} (VLMEvalKit writes "
                                           "index, question, answer, prediction); is this a VLMEvalKit prediction "
                                           "file? Rerun the model's inference or remove the file")
            own = own_files(pf.stem, all_files, pred_stems)
            values, new_notes = per_sample(pf, own, pred, _read_table)
            notes += new_notes
            cols = set(pred.columns)
            keys = [(str(row["index"]), _question_hash(row, cols), _sha(str(row.get("answer", ""))))
                    for _, row in pred.iterrows()]
            means = {m: float(pd.Series(v, dtype=float).mean()) for m, v in values.items()}
            for metric, vals in values.items():
                with_samples.add(dataset)
                sample_rows += [{"task": dataset, "filter": "none", "doc_id": d, "prompt_hash": ph,
                                 "target_hash": th, "metric": metric, "value": float(v)}
                                for (d, ph, th), v in zip(keys, vals)]
                metric_rows.append({"task": dataset, "metric": metric, "filter": "none",
                                    "value": means[metric], "stderr": math.nan,
                                    "is_group": False, "higher_is_better": True})
            aggs, agg_notes = aggregates(own, pf.stem, means, _read_table)
            notes += agg_notes
            for agg in aggs:
                metric_rows.append({"task": dataset, **agg, "stderr": math.nan, "is_group": False,
                                    "higher_is_better": True})
            task_settings[dataset] = {"n_effective": len(pred), "aggregation": {}, "harness_task": raw}
        summary, record = _sidecar(folder, model_folder)
        if summary is None:
            notes.append(f"{model_folder}: no {SIDECAR} (core_eval's record of the intervention); "
                         f"intervention and model unknown")
            intervention = Intervention(None, "vlmeval", recorded=False)
            model = None
        else:
            intervention = Intervention(summary, "vlmeval")
            model = normalize_model((summary.get("model") or {}).get("name_or_path"))
        ev = folder.name if folder is not model_folder else ""
        runs.append(Run(
            name=f"{model_name}@{ev}" if ev else model_name, source="vlmeval", path=folder, model=model,
            intervention=intervention,
            metrics=pd.DataFrame(metric_rows, columns=METRIC_COLUMNS),
            samples=pd.DataFrame(sample_rows, columns=SAMPLE_COLUMNS) if sample_rows else empty_samples(),
            settings={"harness": "VLMEvalKit", "vlmeval_model": model_name, "model_dtype": record.get("dtype"),
                      "gen_kwargs": record.get("generation")},
            task_settings=task_settings, tasks=sorted(task_settings), tasks_with_samples=with_samples,
            timestamp=ev, notes=notes,
        ))
    return runs
