"""Reader for VLMEvalKit work dirs (written against VLMEvalKit's documented output layout).

Layout (``run.py --work-dir WORK``)::

    WORK/<model>/<eval_id>/<model>_<dataset>.xlsx      predictions: index, question, [A..D], answer, prediction
    WORK/<model>/<eval_id>/<model>_<dataset>_<judge>_result.xlsx   MCQ judge output, per-row ``hit`` (0/1)
    WORK/<model>/<eval_id>/<model>_<dataset>_acc.csv   aggregate (``split``, ``Overall``, categories)
    WORK/<model>/<eval_id>/<model>_<dataset>_score.csv aggregate of Y/N and scored datasets
    WORK/<model>/<model>_<dataset>*                    links to the latest eval_id's files

``eval_id`` is ``T<yyyymmdd>_G<commit>``; older releases write straight into ``WORK/<model>/``.
Predictions may be ``.xlsx`` (needs ``openpyxl``, which VLMEvalKit installs), ``.tsv`` or ``.csv``.

A RUN may be the work dir (every model folder in it), a model folder (its own files, else its
newest eval_id folder; ``@EVAL_ID`` picks one), an eval_id folder or one prediction file.

Per run: task = dataset, per-sample metric ``hit`` from the judge's ``*_result`` file (or, with no
judge file, ``exact_match`` computed here from prediction vs answer, with a note), aggregate
``Overall`` from ``*_acc.csv`` / ``*_score.csv`` (filter column = the file kind). Samples pair on
``index`` + a hash of the question and options.

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
_HIT_COLUMNS = ("hit", "score", "correct", "match")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".xlsx":
            try:
                return pd.read_excel(path)
            except ImportError as e:
                raise CorruptFileError(path, f"reading .xlsx needs openpyxl ({e}); pip install openpyxl "
                                             "(VLMEvalKit installs it)") from None
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except CorruptFileError:
        raise
    except Exception as e:  # pandas / openpyxl parse errors
        raise CorruptFileError(path, f"cannot read table: {e}") from None


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


def _norm(x) -> str:
    return re.sub(r"\s+", " ", str(x)).strip().strip(".").lower()


def _exact(pred, answer, is_mcq: bool) -> float:
    if pd.isna(answer):
        return math.nan
    p, a = _norm(pred), _norm(answer)
    if p == a:
        return 1.0
    if is_mcq and len(a) == 1:
        m = re.match(r"^\(?([a-z])[\).:]?(\s|$)", p)
        return float(bool(m and m.group(1) == a))
    return 0.0


def _hits(pred_file: Path, files: list[Path], pred: pd.DataFrame) -> tuple[pd.Series, str, str | None]:
    """Per-row 0/1 scores indexed like ``pred``: (values, metric name, note)."""
    stem = pred_file.stem
    detail = [f for f in files if f.stem.startswith(stem + "_") and not f.stem.endswith(("_acc", "_score"))]
    detail.sort(key=lambda f: (not f.stem.endswith("_result"), f.name))
    for f in detail:
        df = _read_table(f)
        if "index" not in df.columns:
            continue
        for col in _HIT_COLUMNS:
            if col in df.columns and pd.api.types.is_numeric_dtype(df[col]):
                d = df.drop_duplicates("index")
                s = pd.Series(d[col].astype(float).values, index=d["index"].astype(str))
                return pred["index"].astype(str).map(s).astype(float).values, "hit", None
    if "answer" not in pred.columns:
        return None, "", f"{pred_file.name}: no judge file with per-row hits and no answer column: aggregate only"
    is_mcq = "A" in pred.columns and "B" in pred.columns
    vals = [_exact(p, a, is_mcq) for p, a in zip(pred["prediction"], pred["answer"])]
    return (pd.Series(vals).values, "exact_match",
            f"{pred_file.name}: no judge file with per-row hits; exact_match computed by core_eval "
            "(prediction vs answer)")


def _aggregate(files: list[Path], stem: str) -> list[dict]:
    rows = []
    for kind in ("acc", "score"):
        f = next((f for f in files if f.stem == f"{stem}_{kind}" and f.suffix == ".csv"), None)
        if f is None:
            f = next((f for f in files if f.stem.startswith(stem + "_") and f.stem.endswith(f"_{kind}")
                      and f.suffix == ".csv"), None)
        if f is None:
            continue
        df = _read_table(f)
        value = math.nan
        if "Overall" in df.columns and len(df):
            row = df.iloc[0]
            if "split" in df.columns:
                pref = df[df["split"].astype(str).str.lower().isin(["none", "dev", "val", "test"])]
                row = pref.iloc[0] if len(pref) else row
            value = pd.to_numeric(row["Overall"], errors="coerce")
        elif df.shape[1] >= 2:
            first = df.iloc[:, 0].astype(str)
            hit = df[first.str.lower() == "overall"]
            if len(hit):
                value = pd.to_numeric(hit.iloc[0, 1], errors="coerce")
        if not pd.isna(value):
            rows.append({"metric": "Overall", "filter": f"{kind}.csv", "value": float(value)})
    return rows


def _sidecar(folder: Path, model_folder: Path) -> tuple[dict | None, dict]:
    """(intervention summary, whole record) from ``core_eval.json``; (None, {}) when absent."""
    for d in (folder, model_folder):
        f = d / SIDECAR
        if f.is_file():
            data = load_json(f)
            if not isinstance(data, dict):
                raise CorruptFileError(f, "expected a JSON object (core_eval's record of the run)")
            if isinstance(data.get("core_eval"), dict):
                return data["core_eval"], data
            if "variant" in data or "n_heads" in data:
                return data, {}
            raise CorruptFileError(f, "no 'core_eval' intervention summary in this record")
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
        for pf in preds:
            dataset = pf.stem[len(model_name) + 1:]
            pred = _read_table(pf)
            missing = {"index", "prediction"} - set(pred.columns)
            if missing:
                raise CorruptFileError(pf, f"prediction file lacks column(s) {sorted(missing)}")
            values, metric, note = _hits(pf, all_files, pred)
            if note:
                notes.append(note)
            if values is not None:
                with_samples.add(dataset)
                cols = set(pred.columns)
                for (_, row), v in zip(pred.iterrows(), values):
                    sample_rows.append({
                        "task": dataset, "filter": "none", "doc_id": str(row["index"]),
                        "prompt_hash": _question_hash(row, cols),
                        "target_hash": _sha(str(row.get("answer", ""))), "metric": metric, "value": float(v)})
                valid = pd.Series(values, dtype=float)
                metric_rows.append({"task": dataset, "metric": metric, "filter": "none",
                                    "value": float(valid.mean()), "stderr": math.nan,
                                    "is_group": False, "higher_is_better": True})
            for agg in _aggregate(all_files, pf.stem):
                metric_rows.append({"task": dataset, **agg, "stderr": math.nan, "is_group": False,
                                    "higher_is_better": True})
            task_settings[dataset] = {"n_effective": len(pred), "aggregation": {}}
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
