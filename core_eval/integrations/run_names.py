"""Run names that say which intervention a run applied: one declaration for every harness.

``core-vlmeval`` names its model folders ``<base>__<tag>``; lm-eval's ``core_hf`` names its run
folders ``<model>__<tag>`` (:mod:`core_eval.integrations.lm_eval`). Harness-free.
"""

from __future__ import annotations

import hashlib
import json
import re


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", ".", str(text)).strip(".") or "x"


def default_base_name(pretrained) -> str:
    """``core-<last path component>`` (``core-llava-1.5-7b-hf``)."""
    return "core-" + _slug(str(pretrained).rstrip("/").replace("\\", "/").split("/")[-1])


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        if hasattr(obj, "shape"):  # a tensor (computed means): identified by its values
            import numpy as np

            arr = np.ascontiguousarray(obj.detach().cpu().float().numpy() if hasattr(obj, "detach") else obj)
            return {"array_sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "shape": list(arr.shape)}
        return repr(obj)


def intervention_identity(plan) -> dict:
    """Everything about the planned intervention that can change predictions (hashed into names).

    Extend this (not the name format) when new intervention kinds, e.g. sparse attention, land.
    """
    return {
        "heads": sorted([int(layer), int(head)] for layer, head in plan.heads),
        "variant": _jsonable(plan.variant.describe()),
        "spec_hash": None if plan.spec is None else plan.spec.content_hash(),
        "means_source": None if not plan.needs_means else {"probes": plan.means_probes, "n": plan.means_n},
    }


def intervention_tag(plan, *, seed: int | None = None) -> str:
    """``baseline`` when no head is touched, else ``<variant>-<rule><n heads>-s<seed>-<hash8>``
    (``zero-top5-s0-1a2b3c4d``, ``zero-explicit3-s0-...``): readable, and the hash makes two
    different masks never share a name (VLMEvalKit reuses predictions by name). A sparse pattern
    with no full heads changes every head (``streaming-none0-...``), so it is no baseline."""
    if not plan.heads and plan.variant.kind != "sparse":
        return "baseline"
    sel = plan.selection or {}
    rule = "spec" if sel.get("from_spec") else str(sel.get("rule") or "heads")
    digest = hashlib.sha256(json.dumps(intervention_identity(plan), sort_keys=True).encode()).hexdigest()[:8]
    return f"{_slug(plan.variant.name)}-{_slug(rule)}{len(plan.heads)}-s{0 if seed is None else int(seed)}-{digest}"
