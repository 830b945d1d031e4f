"""Readers for head files from other projects, and :func:`load_head_spec`, which detects the format.

Formats:

- **Retrieval Head** (arXiv 2404.15574) JSON: ``{"L-H": [score, score, ...], ...}``, one key per
  *query* head, values the per-sample retrieval scores. Head score = mean, with ``std`` (ddof=0)
  and ``n``. A bare number is read as one sample. Retrieval Head writes every head with its
  scores, so a head that is absent or has an empty list is an error (a score of 0 would rank it
  as if measured).
  Without a ``shape`` the file's largest indices give ``num_layers = max layer + 1`` and
  ``num_heads = max head + 1`` (``num_kv_heads``/``head_dim`` stay unknown); Retrieval Head writes
  every head, so this is exact for its files, and ``check_shape`` catches a truncated one. With a
  ``shape``, every key must be in range. Score array: ``retrieval_score``; default selection:
  top 5% (DESIGN §3).
- **DuoAttention** (arXiv 2410.10819) ``full_attention_heads.tsv``: one row per layer, one
  tab-separated column per *KV* head, gate values in [0, 1] (clipped into [0, 1] as DuoAttention's
  own loader does). With a ``shape``: rows must equal ``num_layers``; ``num_kv_heads`` columns are
  repeated over the ``groups`` query heads of each KV head (query head ``h`` gets the value of KV
  head ``h // groups``); ``num_heads`` columns are taken as per query head. Without a shape the
  model is assumed MHA (``num_heads = num_kv_heads = columns``). Score array: ``duo_gate``;
  default selection: ``threshold`` 0.5 (DuoAttention's default: gate >= 0.5 is a full-attention
  head), ``kv_policy`` ``any`` (whole groups are selected, so ``any`` = ``all``).

Every converted spec records ``legacy_format``, the source file, its sha256 and ``shape_source``
in ``scorer``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core_eval.spec.errors import HeadSpecError
from core_eval.spec.format import SCHEMA, HeadSpec, _make_selection, _parse_json, _read_text, _shape_str
from core_eval.spec.selection import _is_real

if TYPE_CHECKING:
    from core_eval.adapters.base import ModelShape

_RH_KEY = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
DUO_FILENAME = "full_attention_heads.tsv"


def _shape_of(shape) -> tuple[int, int, int, int]:
    try:
        return (int(shape.num_layers), int(shape.num_heads), int(shape.num_kv_heads), int(shape.head_dim))
    except (AttributeError, TypeError):
        raise HeadSpecError(f"shape must be a ModelShape, got {shape!r}",
                            "pass core_eval.adapters.base.ModelShape (e.g. from shape_from_config)") from None


def _model(source: str, L: int, H: int, KV, D, model_info: dict | None) -> dict:
    model = {"name": Path(source).stem, "revision": None, "architecture": None}
    model.update(model_info or {})
    model.update(num_layers=L, num_heads=H, num_kv_heads=KV, head_dim=D)
    return model


def from_retrieval_head(obj: dict, *, source: str = "<retrieval head json>", shape: "ModelShape | None" = None,
                        model_info: dict | None = None, sha256: str | None = None) -> HeadSpec:
    """Convert a parsed Retrieval Head ``{"L-H": [scores...]}`` object (see module doc)."""
    if not obj:
        raise HeadSpecError("the JSON object is empty: no heads", "pass a Retrieval Head file with 'layer-head' keys",
                            source)
    per_head: dict[tuple[int, int], list[float]] = {}
    for key, val in obj.items():
        m = _RH_KEY.match(str(key))
        if m is None:
            raise HeadSpecError(f"key {key!r} is not 'layer-head' (e.g. '12-3')",
                                "a Retrieval Head file maps 'layer-head' to a list of per-sample scores", source)
        vals = [val] if _is_real(val) else val
        if not isinstance(vals, list) or not all(_is_real(v) for v in vals):
            raise HeadSpecError(f"value of {key!r} is {val!r}, not a list of numbers",
                                "each head maps to its per-sample scores", source)
        if not all(math.isfinite(v) for v in vals):
            raise HeadSpecError(f"value of {key!r} holds a non-finite score", "remove NaN/inf samples", source)
        head = (int(m.group(1)), int(m.group(2)))
        if head in per_head:
            raise HeadSpecError(f"head {head[0]}-{head[1]} appears twice (as {key!r})", "list each head once", source)
        per_head[head] = [float(v) for v in vals]
    empty = sorted(h for h, vals in per_head.items() if not vals)
    if empty:
        shown = ", ".join(f"'{a}-{b}'" for a, b in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise HeadSpecError(f"{len(empty)} of {len(per_head)} heads have an empty score list ({shown}): they were "
                            "never measured", "pass the Retrieval Head file of a finished run (every head with "
                            "its per-sample scores)", source)
    max_l = max(layer for layer, _ in per_head)
    max_h = max(head for _, head in per_head)
    if shape is not None:
        L, H, KV, D = _shape_of(shape)
        for layer, head in sorted(per_head):
            if layer >= L or head >= H:
                raise HeadSpecError(
                    f"head '{layer}-{head}' is out of range for the model shape {_shape_str(shape.as_dict())} "
                    f"(layer < {L}, head < {H} needed)", "use the file made for this model", source)
        shape_source = "given"
    else:
        L, H, KV, D = max_l + 1, max_h + 1, None, None
        shape_source = ("inferred from the largest layer/head index in the file "
                        "(num_kv_heads and head_dim unknown)")
    absent = [(a, b) for a in range(L) for b in range(H) if (a, b) not in per_head]
    if absent:
        shown = ", ".join(f"'{a}-{b}'" for a, b in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise HeadSpecError(f"{len(absent)} of the {L * H} heads of shape [{L}][{H}] are missing ({shown}); "
                            "a missing head has no score", "pass the complete Retrieval Head file (it lists every "
                            "head), or the shape of the model it was made for", source)
    mean = np.zeros((L, H))
    std = np.zeros((L, H))
    n = np.zeros((L, H))
    for (layer, head), vals in per_head.items():
        a = np.asarray(vals, dtype=np.float64)
        mean[layer, head], std[layer, head], n[layer, head] = a.mean(), a.std(), len(a)
    scores = {"retrieval_score": mean, "std": std, "n": n}
    scorer = {
        "name": "retrieval-head", "legacy_format": "retrieval_head_json", "source_file": source,
        "source_sha256": sha256, "aggregation": "mean of per-sample scores; std ddof=0",
        "n_heads_in_file": len(per_head), "shape_source": shape_source,
    }
    sel = _make_selection(scores, "top", frac=0.05, k=None, seed=0, threshold=None, score="retrieval_score",
                          tiebreak=None, heads=None)
    return HeadSpec(SCHEMA, _model(source, L, H, KV, D, model_info), scorer, scores, sel, "any", {},
                    source=source)


def _parse_tsv(text: str, source: str) -> np.ndarray:
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        row = []
        for col, tok in enumerate(tokens, 1):
            try:
                v = float(tok)
            except ValueError:
                raise HeadSpecError(f"line {lineno}, column {col}: {tok.strip()!r} is not a number",
                                    "a DuoAttention full_attention_heads.tsv holds one row of gate values per layer",
                                    source) from None
            if not math.isfinite(v):
                raise HeadSpecError(f"line {lineno}, column {col}: value {tok.strip()!r} is not finite",
                                    "gate values must be numbers in [0, 1]", source)
            row.append(v)
        if rows and len(row) != len(rows[0]):
            raise HeadSpecError(f"line {lineno} has {len(row)} values but the first row has {len(rows[0])}",
                                "every row (layer) needs one value per KV head", source)
        rows.append(row)
    if not rows:
        raise HeadSpecError("the file holds no rows", "pass a DuoAttention full_attention_heads.tsv", source)
    return np.asarray(rows, dtype=np.float64)


def from_duo_attention_tsv(text: str, *, source: str = "<duoattention tsv>", shape: "ModelShape | None" = None,
                           model_info: dict | None = None, threshold: float = 0.5, sha256: str | None = None,
                           attn_config: dict | None = None) -> HeadSpec:
    """Convert DuoAttention ``full_attention_heads.tsv`` text (see module doc)."""
    gates = _parse_tsv(text, source)
    clipped = int(np.sum((gates < 0) | (gates > 1)))
    gates = np.clip(gates, 0.0, 1.0)
    rows, cols = gates.shape
    if shape is not None:
        L, H, KV, D = _shape_of(shape)
        if rows != L or cols not in (KV, H):
            raise HeadSpecError(
                f"the file has {rows} rows (layers) x {cols} columns but the model shape is "
                f"{_shape_str(shape.as_dict())}: expected {L} rows and {KV} (KV heads) or {H} (query heads) columns",
                "use the DuoAttention pattern trained for this model", source)
        if cols == H:
            per_query, how = gates, "columns are query heads (taken as they are)"
        else:
            per_query = np.repeat(gates, H // KV, axis=1)
            how = f"columns are KV heads, each repeated over its {H // KV} query heads (query h <- kv h // {H // KV})"
        shape_source = "given"
    else:
        L, H, KV, D = rows, cols, cols, None
        per_query, how = gates, "columns are KV heads; no shape given, so MHA assumed (num_heads = num_kv_heads)"
        shape_source = "inferred from the file (rows = layers, columns = KV heads, assumed MHA; head_dim unknown)"
    scorer = {
        "name": "duo-attention", "legacy_format": "duoattention_tsv", "source_file": source, "source_sha256": sha256,
        "per": "kv_head", "expansion": how, "n_clipped_to_unit_interval": clipped, "shape_source": shape_source,
    }
    for key in ("sink_size", "recent_size"):
        if attn_config and key in attn_config:
            scorer[key] = attn_config[key]
    scores = {"duo_gate": per_query}
    sel = _make_selection(scores, "threshold", frac=None, k=None, seed=0, threshold=threshold, score="duo_gate",
                          tiebreak=None, heads=None)
    return HeadSpec(SCHEMA, _model(source, L, H, KV, D, model_info), scorer, scores, sel, "any", {},
                    source=source)


def load_head_spec(
    path: str | os.PathLike,
    *,
    shape: "ModelShape | None" = None,
    model_info: dict | None = None,
    duo_threshold: float = 0.5,
) -> HeadSpec:
    """Load a head spec in any supported format, detected from the content.

    - JSON with a ``schema`` field -> ``core-head-spec/v1`` (:meth:`HeadSpec.read`).
    - JSON whose keys are all ``"layer-head"`` -> Retrieval Head.
    - a ``.tsv`` file, other text of numbers, or a directory holding ``full_attention_heads.tsv``
      (DuoAttention's ``attn_load_dir``; its ``config.json`` sink/recent sizes are recorded) -> DuoAttention.

    With ``shape``, a v1 spec is checked against it (:meth:`HeadSpec.check_shape`, error names
    both shapes) and a legacy file is converted for it. ``model_info`` (``name``, ``revision``,
    ``architecture``...) and ``duo_threshold`` apply to legacy files only.
    """
    p = Path(path)
    attn_config = None
    if p.is_dir():
        tsv = p / DUO_FILENAME
        if not tsv.is_file():
            raise HeadSpecError(f"is a directory without {DUO_FILENAME}",
                                "pass a head spec file, or a DuoAttention pattern directory", str(p))
        cfg = p / "config.json"
        if cfg.is_file():
            try:
                attn_config = json.loads(cfg.read_text())
            except (OSError, ValueError):
                attn_config = None
        p = tsv
    source = str(p)
    text = _read_text(p)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    stripped = text.lstrip()
    if not stripped:
        raise HeadSpecError("the file is empty", "re-create the file; core_eval writes specs atomically, so an "
                            "empty file was truncated elsewhere", source)
    if p.suffix.lower() != ".tsv" and (p.suffix.lower() == ".json" or stripped[0] in "{["):
        obj = _parse_json(text, source)
        if isinstance(obj, dict) and "schema" in obj:
            spec = HeadSpec.from_dict(obj, source=source)
            if shape is not None:
                spec.check_shape(shape)
            return spec
        if isinstance(obj, dict) and obj and all(_RH_KEY.match(str(k)) for k in obj):
            return from_retrieval_head(obj, source=source, shape=shape, model_info=model_info, sha256=sha)
        what = f"a {type(obj).__name__}" if not isinstance(obj, dict) else (
            "an empty object" if not obj else f"an object with keys like {list(obj)[:3]}")
        raise HeadSpecError(
            f"unrecognised JSON: {what}, neither a {SCHEMA} spec (no 'schema' field) nor a Retrieval Head "
            "file ({\"layer-head\": [scores...]})", f'add "schema": "{SCHEMA}" with the v1 fields, or check the file',
            source)
    try:
        return from_duo_attention_tsv(text, source=source, shape=shape, model_info=model_info,
                                      threshold=duo_threshold, sha256=sha, attn_config=attn_config)
    except HeadSpecError as e:
        if p.suffix.lower() == ".tsv":
            raise
        raise HeadSpecError(f"unrecognised format: not JSON, and not a DuoAttention TSV ({e.problem})",
                            f"pass a {SCHEMA} .json, a Retrieval Head .json or a DuoAttention {DUO_FILENAME}",
                            source) from None
