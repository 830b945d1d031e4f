"""What a reader returns: a :class:`Run` (one harness evaluation of one model) and its :class:`Intervention`.

``Run.metrics`` (aggregate scores as the harness reported them) has the columns
``task, metric, filter, value, stderr, is_group, higher_is_better``; ``Run.samples`` (per-sample
scores, long format) has ``task, filter, doc_id, prompt_hash, target_hash, metric, value``.
``doc_id`` is a string in both readers. Samples are paired across runs on
``(task, filter, doc_id, prompt_hash)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from core_eval.report.errors import CorruptFileError

METRIC_COLUMNS = ["task", "metric", "filter", "value", "stderr", "is_group", "higher_is_better"]
SAMPLE_COLUMNS = ["task", "filter", "doc_id", "prompt_hash", "target_hash", "metric", "value"]

#: The selection rules of the causal test, in display order.
CONTROL_RULES = ("top", "bottom", "random", "layer_matched_random")


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


@dataclass
class Intervention:
    """What was done to the model, read from the run's recorded config.

    ``summary`` is lm-eval's ``config["core_eval"]`` (or a VLMEvalKit sidecar with the same
    content); ``None`` for a plain harness run. ``recorded`` is False when the reader could not
    tell at all (a VLMEvalKit run without sidecar): such a run is never taken for a baseline
    unless passed as one.
    """

    summary: dict | None = None
    harness_model: str = ""
    recorded: bool = True

    @property
    def is_baseline(self) -> bool:
        """Unmodified model: a plain harness run or a core_eval run with no heads (a sparse pattern
        with no full heads changes every head: not a baseline)."""
        if not self.recorded:
            return False
        return self.summary is None or (self.n_heads == 0 and self.kind != "sparse")

    @property
    def variant(self) -> str | None:
        """Mode name (``zero``, ``text_only``, ...); ``none`` for a core_eval run with no heads (older
        releases recorded ``heads=none`` as ``zero`` of no heads); None for a plain harness run."""
        if not self.summary:
            return None
        if self.n_heads == 0 and self.kind != "sparse":
            return "none"
        return (self.summary.get("variant") or {}).get("name")

    @property
    def kind(self) -> str | None:
        return (self.summary or {}).get("variant", {}).get("kind") if self.summary else None

    @property
    def options(self) -> dict:
        return dict(((self.summary or {}).get("variant") or {}).get("options") or {})

    @property
    def n_heads(self) -> int:
        if not self.summary:
            return 0
        n = self.summary.get("n_heads")
        return int(n) if n is not None else len(self.summary.get("heads") or [])

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [tuple(h) for h in (self.summary or {}).get("heads") or []]

    @property
    def selection(self) -> dict:
        return dict((self.summary or {}).get("selection") or {})

    @property
    def rule(self) -> str:
        """Selection rule (``top``, ``bottom``, ``random``, ``explicit``, ...) or ``baseline``."""
        if self.is_baseline:
            return "baseline"
        if not self.recorded:
            return "unknown"
        sel = self.selection
        if sel.get("from_spec") and not sel.get("rule"):
            return "spec"
        return str(sel.get("rule") or "unknown")

    @property
    def total_heads(self) -> int | None:
        shape = (self.summary or {}).get("shape") or {}
        if shape.get("num_layers") and shape.get("num_heads"):
            return int(shape["num_layers"]) * int(shape["num_heads"])
        return None

    @property
    def frac_heads(self) -> float | None:
        """Fraction of all LM query heads in the head set (0 for a baseline)."""
        if self.is_baseline:
            return 0.0
        total = self.total_heads
        return self.n_heads / total if total else None

    @property
    def label(self) -> str:
        """Readable label, e.g. ``zero top-5% (7 heads)``, ``baseline``."""
        if self.is_baseline:
            return "baseline"
        if not self.recorded:
            return "unrecorded intervention"
        sel = self.selection
        rule = self.rule
        if "frac" in sel and sel["frac"] is not None:
            size = f"{rule}-{float(sel['frac']) * 100:g}%"
        elif "k" in sel and sel["k"] is not None:
            size = f"{rule}-{sel['k']}"
        elif rule == "threshold" and sel.get("threshold") is not None:
            size = f"threshold>{_num(sel['threshold'])}"
        else:
            size = rule
        if rule in ("random", "layer_matched_random") and sel.get("seed") is not None:
            size += f" seed={sel['seed']}"
        n = self.n_heads
        if self.kind == "sparse":
            opts = self.options
            extra = " ".join(f"{k}={_num(opts[k])}" for k in ("sink", "window") if k in opts)
            name = f"{self.variant}" + (f" {extra}" if extra else "")
            return f"{name} full={size} ({n} full head{'s' if n != 1 else ''})"
        return f"{self.variant} {size} ({n} head{'s' if n != 1 else ''})"


@dataclass
class Run:
    """One harness run of one model (one lm-eval results file, one VLMEvalKit model folder)."""

    name: str
    source: str  # "lm_eval" | "vlmeval"
    path: Path
    model: str | None
    intervention: Intervention
    metrics: pd.DataFrame
    samples: pd.DataFrame
    settings: dict = field(default_factory=dict)
    task_settings: dict[str, dict] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    tasks_with_samples: set[str] = field(default_factory=set)
    timestamp: str = ""
    notes: list[str] = field(default_factory=list)
    arg: str = ""  # the RUN argument it was read from (a speed file may name a run by it)

    @property
    def label(self) -> str:
        return self.intervention.label

    @property
    def is_baseline(self) -> bool:
        return self.intervention.is_baseline

    @property
    def model_short(self) -> str:
        return short_model(self.model)

    def score(self, task: str, metric: str, filter: str = "none") -> float:
        """Reported aggregate score (NaN if absent)."""
        m = self.metrics
        hit = m[(m.task == task) & (m.metric == metric) & (m["filter"] == filter)]
        return float(hit.value.iloc[0]) if len(hit) else math.nan

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {self.label!r}, model={self.model!r}, tasks={self.tasks})"


#: Folder names that say nothing about the model (``organism/weights`` is shown as ``organism``).
GENERIC_MODEL_DIRS = {"weights", "weight", "model", "models", "checkpoint", "checkpoints", "ckpt", "hf", "final",
                      "latest", "best", "main", "output", "outputs", "snapshot", "snapshots", "merged", "export",
                      "exported", "pretrained", "saved_model"}


def _recorded_hub_name(path: str) -> str | None:
    """``_name_or_path`` from ``path/config.json`` when it is a hub id (``org/name``), not a local path."""
    cfg = Path(path) / "config.json"
    try:
        name = json.loads(cfg.read_text()).get("_name_or_path") if cfg.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(name, str) and name.count("/") == 1 and not name.startswith((".", "/", "~")) \
            and not os.path.exists(name):
        return name
    return None


def short_model(model: str | None) -> str:
    """The model's readable name: a hub id as is; for a local path the checkpoint's recorded hub name,
    a hub-cache ``models--org--name`` folder as ``org/name``, else the last path part that is not a
    generic folder name (``.../organism/weights`` -> ``organism``)."""
    if not model:
        return "unknown-model"
    s = str(model)
    hub = _recorded_hub_name(s)
    if hub:
        return hub
    parts = [p for p in Path(os.path.normpath(s)).parts if p not in ("/", "")]
    for i, p in enumerate(parts):
        if p.startswith("models--") and i + 1 <= len(parts):
            return p[len("models--"):].replace("--", "/")
    if len(parts) == 2 and not s.startswith((".", "/", "~")) and not os.path.exists(s):
        return s  # a hub id
    for p in reversed(parts):
        if p.lower() not in GENERIC_MODEL_DIRS and p not in (".", ".."):
            return p
    return parts[-1] if parts else s


def normalize_model(name: str | None) -> str | None:
    """Model identity used to match runs with baselines (normalized path or hub id)."""
    if name is None or str(name).strip() == "":
        return None
    s = str(name).strip()
    if "/" in s or os.sep in s or s.startswith("."):
        s = os.path.normpath(s)
    return s


# ---------------------------------------------------------------------------------- file helpers


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(path, f"not UTF-8 text ({e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line names the file and line."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorruptFileError(path, f"not UTF-8 text ({e.reason})", line=i) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                hint = "" if line.endswith("\n") else " (truncated file? the run may have been killed while writing)"
                raise CorruptFileError(path, f"invalid JSON: {e.msg} (column {e.colno}){hint}", line=i) from None
            if not isinstance(obj, dict):
                raise CorruptFileError(path, f"expected a JSON object per line, got {type(obj).__name__}", line=i)
            yield i, obj


def empty_metrics() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        METRIC_COLUMNS, [object, object, object, float, float, bool, object])})


def empty_samples() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in SAMPLE_COLUMNS})
