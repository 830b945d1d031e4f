"""Scores of one VLMEvalKit prediction file, taken from the files VLMEvalKit's evaluation wrote.

Per sample: the first ``<pred stem>_*`` file with an ``index`` column and per-row metric columns
(``hit`` of an MCQ judge's ``*_result`` file; ``exact_match`` / ``relaxed_match`` of core_eval's
probe datasets' ``*_score.xlsx``; ``score``, ``correct``, ``match`` elsewhere), under their own
names. Only when no such file exists are scores computed here, with
:mod:`core_eval.probes.metrics` (the probe tasks' rule: exact match on the first line, relaxed
match on the whole generation, aliases and ``normalize_answer``), and a note says so.

Aggregates: ``*_acc.csv`` / ``*_score.csv``. ``Overall`` is kept as a metric; columns that repeat a
per-sample metric (the probe datasets' ``exact_match``) are checked against its mean instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core_eval.probes.metrics import probe_scores

SAMPLE_METRICS = ("hit", "exact_match", "relaxed_match", "score", "correct", "match")
_NOT_METRICS = {"split", "n", "index"}

Reader = Callable[[Path], pd.DataFrame]


def own_files(stem: str, files: list[Path], pred_stems) -> list[Path]:
    """Files derived from prediction file ``stem`` (``<stem>_*``), not those of another prediction
    file whose name extends it (``m_core_grid_needle_mc_*`` is not ``m_core_grid_needle``'s)."""
    longer = [p for p in pred_stems if p.startswith(stem + "_")]
    return [f for f in files if f.stem.startswith(stem + "_")
            and not any(f.stem == p or f.stem.startswith(p + "_") for p in longer)]


def _detail_files(files: list[Path]) -> list[Path]:
    out = [f for f in files if not f.stem.endswith("_acc") and not (f.stem.endswith("_score") and f.suffix == ".csv")]
    return sorted(out, key=lambda f: (not f.stem.endswith("_result"), not f.stem.endswith("_score"), f.name))


def _aliases(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(a) for a in value]
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return []
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return [str(value)]
    return [str(a) for a in parsed] if isinstance(parsed, list) else [str(parsed)]


def _text(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def computed_scores(pred: pd.DataFrame) -> dict[str, np.ndarray]:
    """Probe-metric scores of predictions without a VLMEvalKit score file. MCQ rows (options ``A``,
    ``B``, ... and a letter answer) count the letter, the option text or ``letter text`` as exact."""
    is_mcq = "A" in pred.columns and "B" in pred.columns
    em, rm = [], []
    for _, row in pred.iterrows():
        answer, p = row["answer"], _text(row["prediction"])
        if pd.isna(answer):
            em.append(math.nan)
            rm.append(math.nan)
            continue
        answer, aliases = str(answer), _aliases(row.get("aliases"))
        if is_mcq and answer in pred.columns and not pd.isna(row[answer]):
            aliases += [str(row[answer]), f"{answer} {row[answer]}"]
        scores = probe_scores(p, answer, aliases)
        em.append(scores["exact_match"])
        rm.append(scores["relaxed_match"])
    if is_mcq:
        return {"exact_match": np.array(em)}
    return {"exact_match": np.array(em), "relaxed_match": np.array(rm)}


def per_sample(pred_file: Path, files: list[Path], pred: pd.DataFrame,
               read: Reader) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({metric: values aligned with pred's rows}, notes)`` from ``files`` (:func:`own_files` of
    ``pred_file``); ``{}`` when nothing can be scored."""
    skipped = []
    for f in _detail_files(files):
        df = read(f)
        cols = [c for c in SAMPLE_METRICS if c in df.columns and pd.api.types.is_numeric_dtype(df[c])]
        if "index" not in df.columns or not cols:
            skipped.append(f.name)
            continue
        d = df.assign(index=df["index"].astype(str)).drop_duplicates("index").set_index("index")
        keys = pred["index"].astype(str)
        values = {c: keys.map(d[c].astype(float)).to_numpy(dtype=float) for c in cols}
        missing = int((~keys.isin(d.index)).sum())
        notes = [f"{f.name}: no score for {missing} of {len(pred)} predictions"] if missing else []
        return values, notes
    ignored = f" ({', '.join(skipped)} had no index / per-sample metric column)" if skipped else ""
    if "answer" not in pred.columns:
        return {}, [f"{pred_file.name}: no per-sample score file{ignored} and no answer column: aggregate only"]
    values = computed_scores(pred)
    return values, [f"{pred_file.name}: no per-sample score file from VLMEvalKit's evaluation{ignored}; "
                    f"{', '.join(values)} computed by core_eval.probes.metrics (first line, aliases, "
                    "normalize_answer)"]


def _value_row(df: pd.DataFrame) -> pd.Series:
    row = df.iloc[0]
    if "split" in df.columns:
        pref = df[df["split"].astype(str).str.lower().isin(["none", "dev", "val", "test"])]
        row = pref.iloc[0] if len(pref) else row
    return row


def aggregates(files: list[Path], stem: str, means: dict[str, float], read: Reader) -> tuple[list[dict], list[str]]:
    """``([{metric, filter, value}], notes)`` from ``<stem>_acc.csv`` / ``<stem>_score.csv`` among
    ``files`` (:func:`own_files`); ``means`` are the per-sample means, which a column of the same
    name must agree with."""
    rows, notes = [], []
    for kind in ("acc", "score"):
        matches = [f for f in files if f.suffix == ".csv" and f.stem.endswith(f"_{kind}")]
        f = next((f for f in matches if f.stem == f"{stem}_{kind}"), matches[0] if matches else None)
        if f is None:
            continue
        df = read(f)
        if not len(df) or "index" in df.columns:
            continue
        found = {}
        if "Overall" in df.columns:
            found["Overall"] = pd.to_numeric(_value_row(df)["Overall"], errors="coerce")
        elif (first := df.iloc[:, 0].astype(str).str.lower()).eq("overall").any() and df.shape[1] >= 2:
            found["Overall"] = pd.to_numeric(df[first == "overall"].iloc[0, 1], errors="coerce")
        else:
            row = _value_row(df)
            for c in df.columns:
                if c not in _NOT_METRICS and pd.api.types.is_numeric_dtype(df[c]):
                    found[str(c)] = row[c]
        for metric, value in found.items():
            if pd.isna(value):
                continue
            if metric in means:
                if not math.isclose(float(value), means[metric], rel_tol=1e-9, abs_tol=1e-9):
                    notes.append(f"{f.name}: {metric} = {float(value):g}, but the per-sample scores average "
                                 f"{means[metric]:g}; the per-sample mean is used")
                continue
            rows.append({"metric": metric, "filter": f"{kind}.csv", "value": float(value)})
    return rows, notes
