"""The ``core-head-spec/v1`` file: the :class:`HeadSpec` record, its validation, reading and writing.

File layout (JSON object, DESIGN §5)::

    {
      "schema": "core-head-spec/v1",
      "model": {"name": ..., "revision": ..., "architecture": ...,
                "num_layers": L, "num_heads": H, "num_kv_heads": KV, "head_dim": D},
      "scorer": {"name": "ram-v1", "probe_set": ..., ...},        # free-form object
      "scores": {"ram": [[...H floats...], ...L rows], "lift": ..., "std": ..., "n": ...},
      "selection": {"rule": "top", "frac": 0.05, "score": "ram", "tiebreak": "lift",
                    "heads": [[layer, head], ...],                   # authoritative
                    "by_layer": {"layer_0": [heads], ...}},          # readable view, written for you
      "kv_policy": "any",                                            # any | all | mean
      "stability": {...},                                            # optional: bootstrap of the ranking
      "extra": {}                                                    # optional, free-form
    }

Rules the validator enforces (pure file checks, no model needed):

- ``model``: ``name`` (str), positive ints ``num_layers``/``num_heads``; ``num_kv_heads`` and
  ``head_dim`` positive ints or ``null`` (unknown: only legacy files read without a shape), with
  ``num_heads % num_kv_heads == 0``. Other model keys (``revision``, ``architecture``, ``path``...)
  are free.
- ``scores``: every array dense ``[num_layers][num_heads]``, finite numbers. Any names are allowed
  (``ram``, ``lift``, ``visual_mass``, ``std``, ``n``, causal effects, ...); the RAM-v1 names have
  their ranges checked (:data:`SCORE_RANGES`: masses in [0, 1], ``lift`` / ``std`` / ``n`` >= 0).
- ``selection``: ``rule`` is one of :data:`~core_eval.spec.selection.RULES` or ``manual`` (a
  hand-made list). For every rule except ``manual`` the ``heads`` list must equal the rule
  re-applied to ``scores[score]`` (all rules are deterministic; seeded rules use a
  version-independent hash), so a hand-edited list cannot masquerade as ``top``. ``by_layer``
  must agree with ``heads`` when present.
- ``stability`` (optional; files without it stay valid): how stable the ranking is under a
  bootstrap over the scored samples (:data:`STABILITY_KEYS`, docs/stability.md).
- Unknown top-level, selection or stability keys are errors (custom data goes under ``extra``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core_eval.spec.errors import HeadSpecError
from core_eval.spec.selection import (
    KV_POLICIES,
    RULES,
    SCORE_RULES,
    Head,
    _is_int,
    _is_real,
    check_heads,
    heads_by_layer,
    select_heads,
    to_kv_heads,
)

if TYPE_CHECKING:
    from core_eval.adapters.base import ModelShape

SCHEMA = "core-head-spec/v1"
SPEC_RULES = RULES + ("manual",)
_TOP_KEYS = ("schema", "model", "scorer", "scores", "selection", "kv_policy", "stability", "extra")
_REQUIRED_TOP = ("schema", "model", "scorer", "scores", "selection", "kv_policy")
_SELECTION_KEYS = ("rule", "frac", "k", "seed", "threshold", "score", "tiebreak", "heads", "by_layer")
_SHAPE_KEYS = ("num_layers", "num_heads", "num_kv_heads", "head_dim")
_AUTO = "auto"
SCORE_RANGES = {"ram": (0.0, 1.0), "visual_mass": (0.0, 1.0), "lift": (0.0, None), "std": (0.0, None),
                "n": (0.0, None)}
"""Allowed ``[low, high]`` of the RAM-v1 score arrays (``None``: unbounded); other names are free."""
_RANGE_TOL = 1e-3  # float32 sums of probabilities may exceed 1 by rounding
STABILITY_ARRAYS = {"in_top_k": "fraction of bootstrap resamples in which the head is in the top-k set",
                    "rank_median": "median rank over the resamples (1 = highest score)",
                    "rank_lo": "lower end of the rank interval (percentile (1 - ci) / 2)",
                    "rank_hi": "upper end of the rank interval (percentile (1 + ci) / 2)",
                    "score_lo": "lower end of the score's percentile interval",
                    "score_hi": "upper end of the score's percentile interval"}
STABILITY_KEYS = {"method": "how the resamples were drawn (\"bootstrap over samples\")",
                  "score": "the score array that was ranked", "tiebreak": "its tie-break array, or null",
                  "n_boot": "number of resamples", "seed": "seed of the resampling", "ci": "interval coverage",
                  "n_samples": "samples resampled (the spec's used samples)",
                  "k": "size of the top-k set", "frac": "the fraction k came from, or null",
                  "set_exact": "fraction of resamples whose top-k set equals the full-sample top-k set",
                  "set_jaccard_mean": "mean Jaccard overlap of a resample's top-k set with the full-sample set",
                  "top_sets": "most frequent top-k sets: [{\"heads\": [[layer, head], ...], \"freq\": f}, ...]",
                  **STABILITY_ARRAYS}
"""The fields of the optional ``stability`` section (name -> meaning); arrays are ``[L][H]``."""


def _model_shape_cls():
    # Lazy: core_eval.adapters.base imports torch; the spec module itself stays numpy-only.
    from core_eval.adapters.base import ModelShape

    return ModelShape


def _shape_str(d: dict) -> str:
    def f(v):
        return "?" if v is None else str(v)

    return (f"(num_layers={f(d.get('num_layers'))}, num_heads={f(d.get('num_heads'))}, "
            f"num_kv_heads={f(d.get('num_kv_heads'))}, head_dim={f(d.get('head_dim'))})")


def _jsonable(obj, where: str) -> None:
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise HeadSpecError(f"{where} is not plain JSON data ({e})",
                            "use only str/int/float/bool/None, lists and dicts with str keys, no NaN") from None


def _to_array(value) -> Any:
    if hasattr(value, "detach"):  # a torch tensor, duck-typed (no torch import here)
        value = value.detach().float().cpu().numpy()
    return value


def _check_score_array(name: str, value, L: int, H: int, where: str | None = None) -> np.ndarray:
    where = where or f"scores.{name}"
    fix_shape = f"write one row per layer ({L}) with one value per query head ({H})"
    value = _to_array(value)
    if isinstance(value, np.ndarray):
        arr = value
    else:
        if not isinstance(value, (list, tuple)):
            raise HeadSpecError(f"{where} is {type(value).__name__}, not a [num_layers][num_heads] array", fix_shape)
        if len(value) != L:
            raise HeadSpecError(f"{where} has {len(value)} rows but the model has num_layers={L} "
                                f"(expected shape [{L}][{H}])", fix_shape)
        for i, row in enumerate(value):
            if not isinstance(row, (list, tuple)) or len(row) != H:
                got = f"{len(row)} values" if isinstance(row, (list, tuple)) else type(row).__name__
                raise HeadSpecError(f"{where}[{i}] has {got} but the model has num_heads={H} "
                                    f"(expected shape [{L}][{H}])", fix_shape)
            for j, v in enumerate(row):
                if not _is_real(v):
                    raise HeadSpecError(f"{where}[{i}][{j}] is {v!r}, not a number", "scores must be numbers")
        arr = np.array(value, dtype=np.float64)
    if arr.shape != (L, H):
        raise HeadSpecError(f"{where} has shape {list(arr.shape)} but the model shape needs [{L}, {H}] "
                            "(num_layers, num_heads)", fix_shape)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise HeadSpecError(f"{where} has dtype {arr.dtype}, not real numbers", "store float scores")
    arr = np.array(arr, dtype=np.float64)  # a private copy
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        i, j = (int(x) for x in bad[0])
        raise HeadSpecError(f"{where}[{i}][{j}] is {arr[i, j]} ({len(bad)} non-finite value(s) in {where})",
                            "scores must be finite numbers; a head without samples gets score 0 and n=0")
    if where.startswith("scores.") and name in SCORE_RANGES:
        lo, hi = SCORE_RANGES[name]
        out = np.argwhere((arr < lo - _RANGE_TOL) | (arr > (np.inf if hi is None else hi + _RANGE_TOL)))
        if len(out):
            i, j = (int(x) for x in out[0])
            span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise HeadSpecError(f"{where}[{i}][{j}] is {arr[i, j]}, outside the range of {name} ({span}; "
                                f"{len(out)} value(s) outside)",
                                f"{name} is a ram-v1 score; re-score the model, or store other numbers under "
                                "another score name")
    arr.setflags(write=False)
    return arr


def _check_stability(st, scores: dict, L: int, H: int) -> dict:
    """Validate the optional ``stability`` section; returns it with arrays as nested float lists."""
    if not isinstance(st, dict):
        raise HeadSpecError(f"'stability' is {type(st).__name__}, not an object", "drop it, or re-score the model")
    unknown = [k for k in st if k not in STABILITY_KEYS]
    if unknown:
        raise HeadSpecError(f"unknown stability key(s) {', '.join(repr(u) for u in unknown)}",
                            f"allowed keys are {', '.join(STABILITY_KEYS)} (docs/stability.md)")
    need = ("method", "score", "n_boot", "n_samples", "k", "in_top_k")
    missing = [k for k in need if k not in st]
    if missing:
        raise HeadSpecError(f"'stability' is missing {', '.join(repr(m) for m in missing)}",
                            "re-score the model (core-eval score writes a complete section), or drop it")
    if st["score"] not in scores:
        raise HeadSpecError(f"stability.score names {st['score']!r}, which is not in 'scores'",
                            "name one of the score arrays")
    for key in ("n_boot", "n_samples"):
        if not _is_int(st[key]) or st[key] < 1:
            raise HeadSpecError(f"stability.{key} is {st[key]!r}, not a positive integer", "re-score the model")
    if not _is_int(st["k"]) or not 0 <= st["k"] <= L * H:
        raise HeadSpecError(f"stability.k is {st['k']!r}, not a head count in 0..{L * H}", "re-score the model")
    for key in ("ci", "set_exact", "set_jaccard_mean", "frac"):
        v = st.get(key)
        if v is not None and (not _is_real(v) or not 0 <= v <= 1):
            raise HeadSpecError(f"stability.{key} is {v!r}, not a number in [0, 1]", "re-score the model")
    out = dict(st)
    bounds = {"in_top_k": (0, 1), "rank_median": (1, L * H), "rank_lo": (1, L * H), "rank_hi": (1, L * H)}
    for key in STABILITY_ARRAYS:
        if key not in st:
            continue
        arr = _check_score_array(key, st[key], L, H, where=f"stability.{key}")
        lo, hi = bounds.get(key, (-np.inf, np.inf))
        if ((arr < lo) | (arr > hi)).any():
            raise HeadSpecError(f"stability.{key} has values outside [{lo}, {hi}]", "re-score the model")
        out[key] = arr.tolist()
    sets = st.get("top_sets", [])
    if not isinstance(sets, list) or not all(isinstance(x, dict) and set(x) == {"heads", "freq"} for x in sets):
        raise HeadSpecError("stability.top_sets is not a list of {\"heads\": [...], \"freq\": f} objects",
                            "re-score the model")
    for i, x in enumerate(sets):
        check_heads(x["heads"], L, H, what=f"stability.top_sets[{i}].heads")
    _jsonable(out, "'stability'")
    return out


def _check_model(model) -> dict:
    if not isinstance(model, dict):
        raise HeadSpecError(f"'model' is {type(model).__name__}, not an object",
                            'write "model": {"name": ..., "num_layers": ..., "num_heads": ..., '
                            '"num_kv_heads": ..., "head_dim": ...}')
    missing = [k for k in ("name",) + _SHAPE_KEYS if k not in model]
    if missing:
        raise HeadSpecError(f"'model' is missing {', '.join(repr(m) for m in missing)}",
                            "add them (use null for num_kv_heads/head_dim only if truly unknown)")
    if not isinstance(model["name"], str):
        raise HeadSpecError(f"model.name is {model['name']!r}, not a string", "write the model name or path")
    for key in _SHAPE_KEYS:
        v = model[key]
        if v is None and key in ("num_kv_heads", "head_dim"):
            continue
        if not _is_int(v) or v <= 0:
            raise HeadSpecError(f"model.{key} is {v!r}, not a positive integer", "copy it from the model config")
    kv = model["num_kv_heads"]
    if kv is not None and model["num_heads"] % kv:
        raise HeadSpecError(f"model.num_heads={model['num_heads']} is not a multiple of num_kv_heads={kv}",
                            "copy both from the model config")
    _jsonable(model, "'model'")
    out = dict(model)
    for key in _SHAPE_KEYS:
        if out[key] is not None:
            out[key] = int(out[key])
    return out


def _check_selection(sel, scores: dict[str, np.ndarray], L: int, H: int) -> dict:
    """Validate a selection object; returns it normalised (``heads`` sorted tuples, no ``by_layer``)."""
    example = '"selection": {"rule": "top", "frac": 0.05, "score": "ram", "heads": [[layer, head], ...]}'
    if not isinstance(sel, dict):
        raise HeadSpecError(f"'selection' is {type(sel).__name__}, not an object", f"write {example}")
    unknown = [k for k in sel if k not in _SELECTION_KEYS]
    if unknown:
        raise HeadSpecError(f"unknown selection key(s) {', '.join(repr(u) for u in unknown)}",
                            f"allowed keys are {', '.join(_SELECTION_KEYS)}; e.g. {example}")
    for key in ("rule", "heads"):
        if key not in sel:
            raise HeadSpecError(f"'selection' is missing {key!r}", f"write {example}")
    rule = sel["rule"]
    if rule not in SPEC_RULES:
        raise HeadSpecError(f"unknown selection rule {rule!r}", f"use one of {', '.join(SPEC_RULES)}")
    if not isinstance(sel["heads"], list):
        raise HeadSpecError(f"selection.heads is {type(sel['heads']).__name__}, not a list",
                            "write a list of [layer, head] pairs")
    heads = check_heads(sel["heads"], L, H, what="selection.heads")
    if "by_layer" in sel:
        view = sel["by_layer"]
        expect = {f"layer_{layer}": hs for layer, hs in heads_by_layer(heads).items()}
        if not isinstance(view, dict) or {k: sorted(v) if isinstance(v, list) else v for k, v in view.items()} != expect:
            raise HeadSpecError("selection.by_layer disagrees with selection.heads (the heads list is authoritative)",
                                "edit selection.heads, and delete by_layer (it is rewritten on save)")
    out = {k: v for k, v in sel.items() if k not in ("heads", "by_layer")}
    for name_key in ("score", "tiebreak"):
        v = out.get(name_key)
        if v is not None and v not in scores:
            raise HeadSpecError(f"selection.{name_key} names score {v!r}, which is not in 'scores' "
                                f"(have: {', '.join(scores) or 'none'})", "name one of the score arrays")
    if rule in SCORE_RULES and out.get("score") is None:
        raise HeadSpecError(f"selection rule {rule!r} needs selection.score (the score array it ranks)",
                            f'add e.g. "score": "{next(iter(scores), "ram")}"')
    if rule in SCORE_RULES or rule == "none":
        params = {k: out.get(k) for k in ("frac", "k", "threshold")}
        if rule in ("random", "layer_matched_random"):
            params["seed"] = out.get("seed", 0)
        elif out.get("seed") is not None:
            raise HeadSpecError(f"selection rule {rule!r} takes no seed", "remove selection.seed")
        try:
            derived = select_heads(
                scores[out["score"]] if rule != "none" else None, rule,
                tiebreak=scores[out["tiebreak"]] if out.get("tiebreak") else None, **params)
        except HeadSpecError as e:
            raise HeadSpecError(f"selection: {e.problem}", e.fix) from None
        if derived != heads:
            extra = sorted(set(heads) - set(derived))[:3]
            lacking = sorted(set(derived) - set(heads))[:3]
            raise HeadSpecError(
                f"selection.heads ({len(heads)} heads) is not what rule {_rule_str(out)} gives on "
                f"scores.{out.get('score')} ({len(derived)} heads; listed but not derived: {extra}, "
                f"derived but not listed: {lacking})",
                'if the list was edited by hand set "rule": "manual"; otherwise regenerate it with '
                "HeadSpec.with_selection(...)")
    else:  # manual
        for key in ("frac", "k", "threshold", "seed"):
            if out.get(key) is not None:
                raise HeadSpecError(f"selection rule 'manual' takes no {key}", f"remove selection.{key}")
    _jsonable(out, "'selection'")
    out["heads"] = heads
    return out


def _rule_str(rule: dict) -> str:
    params = ", ".join(f"{k}={rule[k]}" for k in ("frac", "k", "threshold", "seed") if rule.get(k) is not None)
    return f"{rule['rule']}({params})"


def _canonical_json(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def _pretty(obj, level: int = 0, indent: int = 2) -> str:
    """JSON with objects indented and every list of scalars on one line (one score row per line)."""
    pad, pad1 = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(str(k))}: {_pretty(v, level + 1, indent)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (list, tuple, dict)) for x in obj):
            return json.dumps(list(obj), allow_nan=False)
        items = [f"{pad1}{_pretty(x, level + 1, indent)}" for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


@dataclass(frozen=True, eq=False)
class HeadSpec:
    """A scored model and a chosen head set (``core-head-spec/v1``). Valid by construction.

    Attributes:
        schema: always ``"core-head-spec/v1"``.
        model: name/path, revision, architecture, ``num_layers``, ``num_heads``, ``num_kv_heads``, ``head_dim``.
        scorer: free-form provenance (``"name": "ram-v1"``, probe set + hash, n, query rows, dtype, seed,
            backend, package version; legacy readers record ``legacy_format`` here).
        scores: name -> read-only float64 ``[num_layers, num_heads]`` array.
        selection: rule parameters (``rule``, ``frac``/``k``/``threshold``/``seed``, ``score``,
            ``tiebreak``) plus ``heads``: sorted list of ``(layer, head)`` tuples.
        kv_policy: ``any`` | ``all`` | ``mean`` (see :func:`~core_eval.spec.selection.to_kv_heads`).
        extra: free-form JSON object.
        source: where the spec was read from (not serialised, not compared).
    """

    schema: str
    model: dict
    scorer: dict
    scores: dict
    selection: dict
    kv_policy: str = "any"
    extra: dict = field(default_factory=dict)
    source: str | None = field(default=None, compare=False, repr=False)
    stability: dict | None = None

    def __post_init__(self):
        try:
            clean = self._checked(self.schema, self.model, self.scorer, self.scores, self.selection,
                                  self.kv_policy, self.extra, self.stability)
        except HeadSpecError as e:
            raise e.with_source(self.source or "<head spec>") from None
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    # ----------------------------------------------------------------- validation

    @staticmethod
    def _checked(schema, model, scorer, scores, selection, kv_policy, extra, stability=None) -> dict:
        if schema != SCHEMA:
            raise HeadSpecError(f"unknown schema {schema!r} (this reader understands {SCHEMA!r})",
                                "write the file with this version of core_eval, or upgrade core_eval; "
                                "Retrieval Head / DuoAttention files load through load_head_spec()")
        model = _check_model(model)
        L, H = model["num_layers"], model["num_heads"]
        if not isinstance(scorer, dict):
            raise HeadSpecError(f"'scorer' is {type(scorer).__name__}, not an object",
                                'write e.g. "scorer": {"name": "ram-v1", ...}')
        _jsonable(scorer, "'scorer'")
        if not isinstance(scores, dict):
            raise HeadSpecError(f"'scores' is {type(scores).__name__}, not an object",
                                'write "scores": {"ram": [[...], ...], ...}')
        clean_scores = {}
        for name, value in scores.items():
            if not isinstance(name, str) or not name:
                raise HeadSpecError(f"score name {name!r} is not a non-empty string", "name each score array")
            clean_scores[name] = _check_score_array(name, value, L, H)
        selection = _check_selection(selection, clean_scores, L, H)
        if kv_policy not in KV_POLICIES:
            raise HeadSpecError(f"kv_policy is {kv_policy!r}", f"use one of {', '.join(repr(p) for p in KV_POLICIES)}")
        if kv_policy == "mean" and selection.get("score") is None:
            raise HeadSpecError("kv_policy 'mean' ranks KV heads by the selection score, but selection.score is unset",
                                'set selection.score, or use kv_policy "any"')
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise HeadSpecError(f"'extra' is {type(extra).__name__}, not an object", "write an object, or drop it")
        _jsonable(extra, "'extra'")
        if stability is not None:
            stability = _check_stability(stability, clean_scores, L, H)
        return dict(schema=schema, model=model, scorer=dict(scorer), scores=clean_scores, selection=selection,
                    kv_policy=kv_policy, extra=dict(extra), stability=stability)

    def validate(self) -> "HeadSpec":
        """Re-run every file check (e.g. after mutating a dict field in place). Returns ``self``."""
        try:
            self._checked(self.schema, self.model, self.scorer, dict(self.scores), self._selection_dict(),
                          self.kv_policy, self.extra, self.stability)
        except HeadSpecError as e:
            raise e.with_source(self.source or "<head spec>") from None
        return self

    # ----------------------------------------------------------------- (de)serialisation

    def _selection_dict(self) -> dict:
        sel = {k: v for k, v in self.selection.items() if k != "heads"}
        sel["heads"] = [[int(layer), int(head)] for layer, head in self.selection["heads"]]
        sel["by_layer"] = {f"layer_{layer}": hs for layer, hs in heads_by_layer(self.heads).items()}
        return sel

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (score arrays as nested lists, ``selection.by_layer`` filled in;
        ``stability`` only when present)."""
        d = {
            "schema": self.schema,
            "model": dict(self.model),
            "scorer": dict(self.scorer),
            "scores": {name: arr.tolist() for name, arr in self.scores.items()},
            "selection": self._selection_dict(),
            "kv_policy": self.kv_policy,
        }
        if self.stability is not None:
            d["stability"] = dict(self.stability)
        d["extra"] = dict(self.extra)
        return d

    def to_json(self) -> str:
        """The file text: indented JSON, one score row per line, trailing newline."""
        return _pretty(self.to_dict()) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temp file in the same directory, fsync, then ``os.replace``. Returns the path."""
        from core_eval._io import atomic_write

        return atomic_write(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict, *, source: str | os.PathLike | None = None) -> "HeadSpec":
        """Build from a parsed JSON object; raises :class:`HeadSpecError` naming ``source``."""
        src = str(source) if source is not None else "<head spec>"
        if not isinstance(d, dict):
            raise HeadSpecError(f"the top level is a {type(d).__name__}, not a JSON object",
                                f'a head spec is an object starting with {{"schema": "{SCHEMA}", ...}}', src)
        if "schema" not in d:
            raise HeadSpecError("no 'schema' field, so this is not a core-head-spec file",
                                f'add "schema": "{SCHEMA}"; Retrieval Head {{"L-H": [...]}} JSON and DuoAttention '
                                "TSV files load through core_eval.spec.load_head_spec()", src)
        if d["schema"] != SCHEMA:
            raise HeadSpecError(f"unknown schema {d['schema']!r} (this reader understands {SCHEMA!r})",
                                "use the core_eval version that wrote the file, or convert it", src)
        missing = [k for k in _REQUIRED_TOP if k not in d]
        if missing:
            raise HeadSpecError(f"missing field(s) {', '.join(repr(m) for m in missing)}",
                                f"a {SCHEMA} file needs {', '.join(_REQUIRED_TOP)} (and optionally extra)", src)
        unknown = [k for k in d if k not in _TOP_KEYS]
        if unknown:
            raise HeadSpecError(f"unknown field(s) {', '.join(repr(u) for u in unknown)}",
                                "put custom data under 'extra'", src)
        return cls(d["schema"], d["model"], d["scorer"], d["scores"], d["selection"], d["kv_policy"],
                   d.get("extra", {}), source=src, stability=d.get("stability"))

    @classmethod
    def from_json(cls, text: str, *, source: str | os.PathLike | None = None) -> "HeadSpec":
        """Parse file text (empty-file and malformed-JSON errors carry line/column)."""
        return cls.from_dict(_parse_json(text, str(source) if source is not None else "<head spec>"), source=source)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "HeadSpec":
        """Read a ``core-head-spec/v1`` file (for legacy formats use :func:`load_head_spec`)."""
        return cls.from_json(_read_text(path), source=path)

    # ----------------------------------------------------------------- views

    @property
    def heads(self) -> list[Head]:
        """Selected heads ``[(layer, head), ...]``, sorted."""
        return list(self.selection["heads"])

    @property
    def by_layer(self) -> dict[int, list[int]]:
        """Selected heads as ``{layer: [heads]}`` (non-empty layers only)."""
        return heads_by_layer(self.heads)

    @property
    def rule(self) -> dict:
        """The selection rule without the head list, e.g. ``{"rule": "top", "frac": 0.05, "score": "ram"}``."""
        return {k: v for k, v in self.selection.items() if k != "heads"}

    @property
    def shape(self) -> "ModelShape":
        """The model shape this spec was made for. Raises if the file leaves a field unknown."""
        unknown = [k for k in _SHAPE_KEYS if self.model.get(k) is None]
        if unknown:
            raise HeadSpecError(f"the spec does not record {', '.join(unknown)}, so its full shape is unknown",
                                "reload it with load_head_spec(path, shape=model_shape)", self.source or "<head spec>")
        return _model_shape_cls()(*(int(self.model[k]) for k in _SHAPE_KEYS))

    def score(self, name: str | None = None) -> np.ndarray:
        """Score array ``[num_layers, num_heads]`` (read-only); default: the one the selection ranks."""
        if name is None:
            name = self.selection.get("score")
            if name is None:
                raise HeadSpecError("the selection names no score array", "ask for one by name: spec.score('ram')",
                                    self.source or "<head spec>")
        if name not in self.scores:
            raise HeadSpecError(f"no score array {name!r} (have: {', '.join(self.scores) or 'none'})",
                                "ask for one of those", self.source or "<head spec>")
        return self.scores[name]

    def check_shape(self, shape: "ModelShape") -> None:
        """Raise :class:`HeadSpecError` naming both shapes unless the model ``shape`` matches the spec.

        Fields the spec leaves unknown (``null``) are not compared.
        """
        mine = {k: self.model.get(k) for k in _SHAPE_KEYS}
        try:
            theirs = {k: int(getattr(shape, k)) for k in _SHAPE_KEYS}
        except (AttributeError, TypeError):
            raise HeadSpecError(f"check_shape needs a ModelShape, got {shape!r}",
                                "pass core_eval.adapters.base.ModelShape (e.g. from shape_from_config)") from None
        diff = [k for k in _SHAPE_KEYS if mine[k] is not None and mine[k] != theirs[k]]
        if diff:
            fix = "score this model (core-eval score) or use the spec made for it"
            if "shape_source" in self.scorer:
                fix = (f"the spec's shape was {self.scorer['shape_source']}; reload the legacy file with "
                       "load_head_spec(path, shape=model_shape), or " + fix)
            raise HeadSpecError(
                f"head spec shape {_shape_str(mine)} (model {self.model.get('name')!r}) does not match the model's "
                f"shape {_shape_str(theirs)}; differs in {', '.join(diff)}", fix, self.source or "<head spec>")

    def identity_mismatch(self, *, family: str | None = None, model_type: str | None = None,
                          architectures=()) -> list[str]:
        """How the model this spec was recorded for differs from the given one (shape is not identity).

        Compares what both sides know: the core_eval family (``scorer.family``) and ``model.model_type``
        when the spec records them, else ``model.architecture`` against the config's ``architectures``.
        Returns readable differences (empty: nothing known differs).
        """
        diffs = []
        fam = self.scorer.get("family")
        mt = self.model.get("model_type")
        if fam and family and fam != family:
            diffs.append(f"family {fam!r} (spec) vs {family!r} (model)")
        if mt and model_type and mt != model_type:
            diffs.append(f"model_type {mt!r} (spec) vs {model_type!r} (model)")
        arch = self.model.get("architecture")
        if not fam and not mt and arch and architectures and arch not in architectures:
            diffs.append(f"architecture {arch!r} (spec) vs {'/'.join(architectures)!r} (model)")
        return diffs

    def kv_heads(self, shape: "ModelShape | None" = None) -> list[Head]:
        """Selected KV heads ``[(layer, kv_head), ...]`` under :attr:`kv_policy` (shape defaults to the spec's)."""
        if shape is None:
            shape = self.shape
        else:
            self.check_shape(shape)
        scores = self.scores.get(self.selection.get("score")) if self.kv_policy == "mean" else None
        return to_kv_heads(self.heads, shape, self.kv_policy, scores=scores)

    def content_hash(self, length: int = 16) -> str:
        """Stable sha256 (hex, first ``length`` chars) of the canonical JSON of :meth:`to_dict`."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode("utf-8")).hexdigest()[:length]

    def with_selection(
        self,
        rule: str = "top",
        *,
        frac: float | None = None,
        k: int | None = None,
        seed: int = 0,
        threshold: float | None = None,
        score: str | None = None,
        tiebreak: str | None = _AUTO,
        heads: list | None = None,
        kv_policy: str | None = None,
    ) -> "HeadSpec":
        """A new spec with a new selection (scores, model, scorer unchanged).

        ``heads=[...]`` gives a hand-made list (rule ``manual``). Otherwise ``rule`` is applied to
        ``scores[score]`` (default: the current selection's score). ``tiebreak="auto"`` uses
        ``lift`` when present; ``None`` disables it.
        """
        if score is None:
            score = self.selection.get("score")
        sel = _make_selection(self.scores, rule, frac=frac, k=k, seed=seed, threshold=threshold, score=score,
                              tiebreak=tiebreak, heads=heads)
        return dataclasses.replace(self, selection=sel, kv_policy=kv_policy or self.kv_policy)

    # ----------------------------------------------------------------- dunder

    def __eq__(self, other) -> bool:
        if not isinstance(other, HeadSpec):
            return NotImplemented
        return _canonical_json(self.to_dict()) == _canonical_json(other.to_dict())

    __hash__ = None  # mutable dict fields; use content_hash()

    def __repr__(self) -> str:
        m = self.model
        return (f"HeadSpec(model={m.get('name')!r}, shape={_shape_str(m)}, scores={list(self.scores)}, "
                f"selection={_rule_str(self.selection)} on {self.selection.get('score')!r} -> {len(self.heads)} heads, "
                f"kv_policy={self.kv_policy!r})")


def _make_selection(scores: dict, rule: str, *, frac, k, seed, threshold, score, tiebreak, heads) -> dict:
    """Selection dict (rule params + ``heads``) for :class:`HeadSpec`; validated again on construction."""
    if heads is not None:
        if rule not in ("manual", "top"):  # "top" is the default argument
            raise HeadSpecError(f"heads=[...] is a hand-made list, but rule={rule!r} was given",
                                "pass either heads (rule 'manual') or a rule")
        if any(v is not None for v in (frac, k, threshold)):
            raise HeadSpecError("heads=[...] takes no frac, k or threshold", "drop them")
        sel = {"rule": "manual", "heads": [list(h) for h in heads]}
        if score is not None:
            sel["score"] = score
        return sel
    if tiebreak == _AUTO:
        tiebreak = "lift" if ("lift" in scores and score != "lift" and rule in ("top", "bottom", "random",
                                                                               "layer_matched_random")) else None
    if rule in SCORE_RULES:
        if score is None:
            raise HeadSpecError(f"rule {rule!r} needs a score array name", f"pass score= one of {', '.join(scores)}")
        if score not in scores:
            raise HeadSpecError(f"no score array {score!r} (have: {', '.join(scores) or 'none'})",
                                "pass score= one of those")
    if tiebreak is not None and tiebreak not in scores:
        raise HeadSpecError(f"tiebreak score {tiebreak!r} is not in the scores (have: {', '.join(scores)})",
                            "pass tiebreak= one of those, or None")
    arr = scores[score] if rule in SCORE_RULES else None
    tb = scores[tiebreak] if tiebreak is not None else None
    chosen = select_heads(arr, rule, frac=frac, k=k, seed=seed, threshold=threshold, tiebreak=tb)
    sel: dict = {"rule": rule}
    for key, v in (("frac", frac), ("k", k), ("threshold", threshold)):
        if v is not None:
            sel[key] = float(v) if key != "k" else int(v)
    if rule in ("random", "layer_matched_random"):
        sel["seed"] = int(seed)
    if rule != "none":
        sel["score"] = score
    if tiebreak is not None and rule not in ("threshold", "none"):
        sel["tiebreak"] = tiebreak
    sel["heads"] = [list(h) for h in chosen]
    return sel


def spec_from_scores(
    scores: dict,
    model_info: dict,
    scorer: dict,
    rule: str = "top",
    *,
    frac: float | None = 0.05,
    k: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    score: str = "ram",
    tiebreak: str | None = _AUTO,
    kv_policy: str = "any",
    shape: "ModelShape | None" = None,
    extra: dict | None = None,
) -> HeadSpec:
    """Build a validated spec from score arrays.

    Args:
        scores: name -> ``[num_layers, num_heads]`` array (numpy, nested lists or a CPU torch tensor).
        model_info: ``name`` and optional ``revision``/``architecture``/...; the shape keys may come
            from ``shape`` instead (if both are given they must agree).
        scorer: provenance dict (``{"name": "ram-v1", ...}``).
        rule, frac, k, seed, threshold: see :func:`~core_eval.spec.selection.select_heads`; ``frac``
            is ignored when ``k`` or ``threshold`` is given or ``rule`` is ``none``.
        score: the score array the rule ranks. ``tiebreak``: ``"auto"`` = ``lift`` if present.
    """
    try:
        model = dict(model_info)
        if shape is not None:
            for key, v in shape.as_dict().items():
                if model.get(key) is not None and model[key] != v:
                    raise HeadSpecError(f"model_info[{key!r}]={model[key]} disagrees with shape.{key}={v}",
                                        "pass consistent model_info and shape")
                model[key] = v
        model.setdefault("name", "")
        model = _check_model(model)
        if not isinstance(scores, dict):
            raise HeadSpecError(f"scores is {type(scores).__name__}, not a dict of name -> [L, H] array",
                                "pass e.g. {'ram': ram, 'lift': lift}")
        L, H = model["num_layers"], model["num_heads"]
        arrays = {str(name): _check_score_array(str(name), value, L, H) for name, value in scores.items()}
        if k is not None or threshold is not None or rule == "none":
            frac = None
        sel = _make_selection(arrays, rule, frac=frac, k=k, seed=seed, threshold=threshold, score=score,
                              tiebreak=tiebreak, heads=None)
    except HeadSpecError as e:
        raise e.with_source("<head spec>") from None
    return HeadSpec(SCHEMA, model, dict(scorer), arrays, sel, kv_policy, dict(extra or {}))


# --------------------------------------------------------------------------- text helpers


def _read_text(path: str | os.PathLike) -> str:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise HeadSpecError("file not found", "check the path", str(path)) from None
    except IsADirectoryError:
        raise HeadSpecError("is a directory, not a head spec file", "pass the .json file", str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HeadSpecError(f"not UTF-8 text ({e})", "head specs are UTF-8 JSON; check it is the right file",
                            str(path)) from None


def _parse_json(text: str, source: str):
    if not text.strip():
        raise HeadSpecError("the file is empty", "the write was probably interrupted; re-create the spec "
                            "(core_eval writes atomically, so an empty file came from elsewhere)", source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HeadSpecError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                            "fix the JSON syntax there (or re-create the file)", source) from None
