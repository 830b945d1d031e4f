"""Measured speed input for the accuracy-vs-speed table (``core-eval report --speed FILE``).

``speedup`` is baseline time / run time (> 1: faster), measured on the same model and inputs; a
baseline without an entry counts as 1.0. Each entry names a run by its label (e.g.
``streaming window=256 full=top-5% (7 full heads)``), its run name (``<model>@<timestamp>``,
shown in ``runs.csv``), its results path or the RUN argument it was read from (e.g. lm-eval's
``--output_path`` folder, or that folder's name). Accepted files:

* CSV: a header with a key column ``run`` (or ``label`` / ``name``) and ``speedup``; further
  numeric columns (e.g. ``prefill_speedup``, ``memory_ratio``) are carried into the table.
* JSON: ``{"<run>": 1.8, ...}``, ``{"<run>": {"speedup": 1.8, "memory_ratio": 0.6}, ...}`` or
  ``[{"run": "<run>", "speedup": 1.8, ...}, ...]``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from core_eval.report.errors import CorruptFileError
from core_eval.report.run import load_json

KEY_COLUMNS = ("run", "label", "name")


def _check(path: Path, rows: list[dict]) -> pd.DataFrame:
    if not rows:
        raise CorruptFileError(path, "no speed entries")
    out = []
    for i, r in enumerate(rows, start=1):
        key = r.get("run")
        if key is None or str(key).strip() == "":
            raise CorruptFileError(path, f"entry {i} has no run name")
        try:
            sp = float(r.get("speedup"))
        except (TypeError, ValueError):
            raise CorruptFileError(path, f"entry {key!r}: speedup {r.get('speedup')!r} is not a number") from None
        if not math.isfinite(sp) or sp <= 0:
            raise CorruptFileError(path, f"entry {key!r}: speedup must be a positive number, got {sp}")
        extra = {k: v for k, v in r.items() if k not in ("run", "speedup")}
        out.append({"run": str(key).strip(), "speedup": sp, **extra})
    df = pd.DataFrame(out)
    dup = df["run"][df["run"].duplicated()].tolist()
    if dup:
        raise CorruptFileError(path, f"run(s) listed twice: {dup}")
    return df


def read_speed(path: str | os.PathLike) -> pd.DataFrame:
    """Read a speed file (module doc) -> DataFrame with ``run``, ``speedup`` and any extra columns."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(path, "speed file not found")
    if path.suffix.lower() == ".json":
        data = load_json(path)
        if isinstance(data, dict):
            rows = []
            for k, v in data.items():
                if isinstance(v, dict):
                    rows.append({"run": k, **v})
                else:
                    rows.append({"run": k, "speedup": v})
        elif isinstance(data, list) and all(isinstance(x, dict) for x in data):
            rows = [dict(x) for x in data]
            for r in rows:
                for k in KEY_COLUMNS:
                    if "run" not in r and k in r:
                        r["run"] = r.pop(k)
        else:
            raise CorruptFileError(path, "expected {run: speedup}, {run: {speedup: ...}} or [{run:, speedup:}]")
        return _check(path, rows)
    try:
        df = pd.read_csv(path, sep=None, engine="python")
    except Exception as e:
        raise CorruptFileError(path, f"cannot read CSV: {e}") from None
    key = next((c for c in KEY_COLUMNS if c in df.columns), None)
    if key is None or "speedup" not in df.columns:
        raise CorruptFileError(path, f"CSV needs a 'run' (or 'label'/'name') column and a 'speedup' column; "
                                     f"found {list(df.columns)}", line=1)
    df = df.rename(columns={key: "run"})
    return _check(path, df.to_dict("records"))
