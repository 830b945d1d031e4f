"""How causal effects are stored in a head spec (array names, the measured mask) and read back."""

from __future__ import annotations

import math

import numpy as np

EXACT_LOGPROB = "causal_logprob_drop"
EXACT_LOGPROB_STD = "causal_logprob_drop_std"
EXACT_ACC = "causal_acc_drop"
MEASURED = "causal_measured"
ATTRIBUTION_LOGPROB = "attribution_logprob_drop"
UNMEASURED_FILL = 0.0


def _json_float(v):
    return None if v is None or not math.isfinite(float(v)) else float(v)


def add_causal_to_spec(spec, effects: dict, meta: dict | None = None, *, measured=None):
    """A new :class:`~core_eval.spec.HeadSpec` with the effect arrays added to ``scores``.

    ``effects``: name -> ``[L, H]`` array; ``NaN`` marks a head that was not measured. Arrays with
    ``NaN`` are stored with ``0.0`` there, and the 0/1 array ``causal_measured`` is written (from
    ``measured`` if given, else from the arrays' common ``NaN`` pattern, which must then agree).
    The mask applies to the arrays with ``NaN`` and, when ``measured`` is given, also to every
    ``causal_*`` (exact-ablation) array of this call, so a full exact run replaces a stale mask.
    Arrays without ``NaN`` and no ``measured`` (attribution) are dense and leave the mask alone.
    ``meta`` is merged into ``spec.extra["causal"]`` (top-level keys replaced, e.g. ``"exact"`` and
    ``"attribution"`` records), with the list of arrays and the mask description.
    """
    import dataclasses

    L, H = int(spec.model["num_layers"]), int(spec.model["num_heads"])
    arrays = {}
    for name, value in effects.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        a = np.array(value, dtype=np.float64)
        if a.shape != (L, H):
            raise ValueError(f"effect {name!r} has shape {a.shape}, the spec needs ({L}, {H})")
        if np.isinf(a).any():
            raise ValueError(f"effect {name!r} has infinite values")
        arrays[name] = a
    if MEASURED in arrays:
        raise ValueError(f"{MEASURED!r} is written by add_causal_to_spec; pass measured=... instead")
    with_nan = [n for n, a in arrays.items() if np.isnan(a).any()]
    mask = None
    if measured is not None:
        mask = np.asarray(measured, dtype=bool)
        if mask.shape != (L, H):
            raise ValueError(f"measured has shape {mask.shape}, the spec needs ({L}, {H})")
        bad = [n for n in with_nan if np.isnan(arrays[n][mask]).any()]
        if bad:
            raise ValueError(f"effect(s) {bad} are NaN at heads marked measured")
        masked = sorted({*with_nan, *(n for n in arrays if n.startswith("causal_"))})
    elif with_nan:
        pattern = ~np.isnan(arrays[with_nan[0]])
        for n in with_nan[1:]:
            if not np.array_equal(~np.isnan(arrays[n]), pattern):
                raise ValueError(f"effects {with_nan[0]!r} and {n!r} leave different heads unmeasured (NaN); "
                                 "pass measured=... or write them in separate calls")
        mask, masked = pattern, sorted(with_nan)
    scores = dict(spec.scores)
    for name, a in arrays.items():
        scores[name] = np.where(np.isnan(a), UNMEASURED_FILL, a)
    extra = dict(spec.extra)
    causal = dict(extra.get("causal") or {})
    causal.update(meta or {})
    causal["arrays"] = sorted(set(causal.get("arrays", [])) | set(arrays))
    if mask is not None:
        scores[MEASURED] = mask.astype(np.float64)
        causal["measured_mask"] = {"mask": MEASURED, "arrays": masked, "fill": UNMEASURED_FILL,
                                   "n_measured": int(mask.sum()),
                                   "meaning": "1 = head measured; 0 = not measured (value stored as fill)"}
    extra["causal"] = causal
    if spec.selection.get("score") in arrays and spec.rule["rule"] != "manual":
        # the selection ranks an array we replace: re-derive it with the same rule on the new values
        from core_eval.spec.format import _make_selection

        r = spec.rule
        sel = _make_selection(scores, r["rule"], frac=r.get("frac"), k=r.get("k"), seed=r.get("seed", 0),
                              threshold=r.get("threshold"), score=r.get("score"), tiebreak=r.get("tiebreak"),
                              heads=None)
        return dataclasses.replace(spec, scores=scores, selection=sel, extra=extra)
    return dataclasses.replace(spec, scores=scores, extra=extra)


def causal_scores(spec, name: str) -> np.ndarray:
    """A causal array from a spec, with ``NaN`` at heads the mask says were not measured."""
    arr = np.array(spec.score(name), dtype=float)
    mm = (spec.extra.get("causal") or {}).get("measured_mask")
    if mm and name in mm.get("arrays", []) and mm.get("mask") in spec.scores:
        arr[spec.scores[mm["mask"]] < 0.5] = np.nan
    return arr
