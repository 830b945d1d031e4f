"""Head selection rules, the query-head -> KV-head mapping and small head-list helpers.

A head is ``(layer, query_head)``. Score arrays are dense ``[num_layers, num_heads]`` float arrays.
Every function here is pure and deterministic; none needs a model.

Ranking (DESIGN §3): ``top`` orders heads by score descending, ties broken by ``tiebreak``
(lift) descending, then by ``(layer, head)`` ascending. ``bottom`` is the mirror on the scores:
score ascending, then ``tiebreak`` ascending (among equal scores the one with the lower lift is
"more bottom"), then ``(layer, head)`` ascending.

Seeded randomness does not use numpy's generators (whose algorithms may change between numpy
versions): a head's random rank is ``sha256("<seed>:<layer>:<head>")``, so a seeded control set is
the same on every platform and version, and a spec file can always be re-derived and checked.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from core_eval.spec.errors import HeadSpecError

if TYPE_CHECKING:  # the shape type lives with the adapters; imported lazily (keeps spec light)
    from core_eval.adapters.base import ModelShape

Head = tuple[int, int]

SCORE_RULES = ("top", "bottom", "random", "layer_matched_random", "threshold")
"""Rules that read a score array."""
RULES = SCORE_RULES + ("none",)
"""Rules :func:`select_heads` implements."""
KV_POLICIES = ("any", "all", "mean")


# --------------------------------------------------------------------------- small helpers


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def heads_by_layer(heads: Iterable[Sequence[int]]) -> dict[int, list[int]]:
    """``[(layer, head), ...]`` -> ``{layer: [heads ascending]}``, layers ascending, empty layers omitted.

    Works for KV-head lists ``[(layer, kv_head), ...]`` too.
    """
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return {layer: sorted(out[layer]) for layer in sorted(out)}


def _check_matrix(name: str, a, shape: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise HeadSpecError(f"{name} must be a non-empty [num_layers, num_heads] array, got shape {arr.shape}",
                            "pass one score per (layer, query head)")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise HeadSpecError(f"{name} must hold real numbers, got dtype {arr.dtype}", "convert it to float")
    if shape is not None and arr.shape != shape:
        raise HeadSpecError(f"{name} has shape {arr.shape} but the scores have shape {shape}",
                            "pass arrays of the same [num_layers, num_heads] shape")
    arr = arr.astype(np.float64)
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        layer, head = bad[0]
        raise HeadSpecError(f"{name}[{layer}][{head}] is {arr[layer, head]} ({len(bad)} non-finite values)",
                            "scores must be finite; give heads without samples a score of 0 and n=0")
    return arr


def resolve_count(n_heads: int, *, frac: float | None, k: int | None) -> int:
    """Number of heads a ``frac`` or ``k`` request selects out of ``n_heads``.

    ``frac`` -> ``k = round_half_up(frac * n_heads)``, at least 1 (``frac`` must lie in ``(0, 1]``).
    Exactly one of ``frac`` and ``k`` must be given; ``0 <= k <= n_heads``.
    """
    if (frac is None) == (k is None):
        raise HeadSpecError(
            "give exactly one of frac and k" + (" (both were given)" if frac is not None else " (neither was given)"),
            "e.g. frac=0.05 for the top 5% of heads, or k=20 for 20 heads")
    if frac is not None:
        if not _is_real(frac) or not math.isfinite(frac) or not 0.0 < frac <= 1.0:
            raise HeadSpecError(f"frac={frac!r} is not a fraction in (0, 1]",
                                "pass e.g. frac=0.05 (5% of all heads); for no heads use rule 'none'")
        # half-up rounding; the epsilon keeps 0.05 * 50 = 2.5000000000000004 / 2.4999999999999996 stable.
        return max(1, int(math.floor(frac * n_heads + 0.5 + 1e-9)))
    if not _is_int(k) or not 0 <= k <= n_heads:
        raise HeadSpecError(f"k={k!r} is not a head count between 0 and the number of heads ({n_heads})",
                            f"pass an integer 0 <= k <= {n_heads}")
    return int(k)


def _rank(scores: np.ndarray, tiebreak: np.ndarray | None, *, descending: bool) -> list[Head]:
    """All heads, best first (``descending``) or worst first, with the module's tie rule."""
    L, H = scores.shape
    layer_idx, head_idx = np.divmod(np.arange(L * H), H)
    tb = np.zeros(L * H) if tiebreak is None else tiebreak.ravel()
    s = scores.ravel()
    sign = -1.0 if descending else 1.0
    # np.lexsort sorts by the last key first.
    order = np.lexsort((head_idx, layer_idx, sign * tb, sign * s))
    return [(int(layer_idx[i]), int(head_idx[i])) for i in order]


def _random_key(seed: int, head: Head) -> bytes:
    return hashlib.sha256(f"{int(seed)}:{head[0]}:{head[1]}".encode()).digest()


def _seeded_order(heads: Iterable[Head], seed: int) -> list[Head]:
    return sorted(heads, key=lambda h: _random_key(seed, h))


def select_heads(
    scores: np.ndarray,
    rule: str,
    *,
    frac: float | None = None,
    k: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    tiebreak: np.ndarray | None = None,
) -> list[Head]:
    """Choose heads from a ``[L, H]`` score array. Returns ``[(layer, head), ...]`` sorted by index.

    Rules (size ``k`` from ``frac`` or ``k``, see :func:`resolve_count`):

    - ``top`` / ``bottom``: the ``k`` highest / lowest heads (tie rule in the module doc).
    - ``random``: ``k`` heads drawn (seeded) from the heads *not* in the top-``k`` set.
    - ``layer_matched_random``: per layer, as many heads as the top-``k`` set has in that layer,
      drawn (seeded) from that layer's non-top heads; only if a layer has too few non-top heads
      are its remaining picks drawn from its top heads.
    - ``threshold``: every head with ``score >= threshold`` (no frac/k).
    - ``none``: no heads.

    Args:
        scores: ``[L, H]`` finite scores (ignored by ``none``).
        tiebreak: optional ``[L, H]`` secondary key (lift), same shape as ``scores``.
        seed: integer seed for the two random rules.
    """
    if rule not in RULES:
        raise HeadSpecError(f"unknown selection rule {rule!r}", f"use one of {', '.join(RULES)}")
    if rule == "none":
        if frac is not None or k is not None or threshold is not None:
            raise HeadSpecError("rule 'none' takes no frac, k or threshold", "drop them, or pick another rule")
        return []
    s = _check_matrix("scores", scores)
    tb = None if tiebreak is None else _check_matrix("tiebreak", tiebreak, s.shape)
    L, H = s.shape
    if rule == "threshold":
        if frac is not None or k is not None:
            raise HeadSpecError("rule 'threshold' takes a threshold, not frac or k",
                                "pass threshold=..., or use rule 'top' with frac/k")
        if threshold is None or not _is_real(threshold) or not math.isfinite(threshold):
            raise HeadSpecError(f"rule 'threshold' needs a finite threshold, got {threshold!r}",
                                "pass e.g. threshold=0.5")
        return [(int(a), int(b)) for a, b in np.argwhere(s >= threshold)]
    if threshold is not None:
        raise HeadSpecError(f"rule {rule!r} takes frac or k, not threshold", "drop threshold, or use rule 'threshold'")
    if rule in ("random", "layer_matched_random") and not _is_int(seed):
        raise HeadSpecError(f"seed={seed!r} is not an integer", "pass an integer seed")
    n = resolve_count(L * H, frac=frac, k=k)
    if rule == "bottom":
        return sorted(_rank(s, tb, descending=False)[:n])
    ranked = _rank(s, tb, descending=True)
    top = ranked[:n]
    if rule == "top":
        return sorted(top)
    rest = ranked[n:]
    if rule == "random":
        if len(rest) < n:
            raise HeadSpecError(
                f"a random control of {n} heads excluding the top {n} needs {2 * n} heads, the model has {L * H}",
                "use a smaller frac or k (at most half of all heads)")
        return sorted(_seeded_order(rest, seed)[:n])
    # layer_matched_random
    top_by_layer = heads_by_layer(top)
    rest_by_layer = heads_by_layer(rest)
    out: list[Head] = []
    for layer, top_heads in top_by_layer.items():
        want = len(top_heads)
        pool = _seeded_order([(layer, h) for h in rest_by_layer.get(layer, [])], seed)
        picked = pool[:want]
        if len(picked) < want:  # not enough non-top heads in this layer: fall back to its top heads
            picked += _seeded_order([(layer, h) for h in top_heads], seed)[: want - len(picked)]
        out += picked
    return sorted(out)


# --------------------------------------------------------------------------- KV heads


def _shape_tuple(shape) -> tuple[int, int, int]:
    try:
        L, H, KV = int(shape.num_layers), int(shape.num_heads), int(shape.num_kv_heads)
    except (AttributeError, TypeError):
        raise HeadSpecError(f"expected a ModelShape with num_layers/num_heads/num_kv_heads, got {shape!r}",
                            "pass core_eval.adapters.base.ModelShape(...)") from None
    if L <= 0 or H <= 0 or KV <= 0 or H % KV:
        raise HeadSpecError(f"invalid shape {shape!r}: num_heads must be a positive multiple of num_kv_heads",
                            "check the model config")
    return L, H, KV


def check_heads(heads: Iterable[Sequence[int]], num_layers: int, num_heads: int, *, what: str = "heads") -> list[Head]:
    """Validate ``[(layer, head), ...]`` against a shape: pairs of ints, in range, no duplicates.

    Returns the heads as sorted tuples.
    """
    out: list[Head] = []
    seen: set[Head] = set()
    for i, item in enumerate(heads):
        is_pair = isinstance(item, (Sequence, np.ndarray)) and not isinstance(item, (str, bytes)) and len(item) == 2
        if not is_pair or not all(_is_int(x) for x in item):
            raise HeadSpecError(f"{what}[{i}] is {item!r}, not a [layer, head] pair of integers",
                                "write each head as [layer, head], e.g. [12, 3]")
        layer, head = int(item[0]), int(item[1])
        if not 0 <= layer < num_layers:
            raise HeadSpecError(f"{what}[{i}] = [{layer}, {head}]: layer {layer} is out of range "
                                f"(the model has {num_layers} layers, 0..{num_layers - 1})",
                                "remove the head or use a spec made for this model")
        if not 0 <= head < num_heads:
            raise HeadSpecError(f"{what}[{i}] = [{layer}, {head}]: head {head} is out of range "
                                f"(each layer has {num_heads} query heads, 0..{num_heads - 1})",
                                "remove the head or use a spec made for this model")
        if (layer, head) in seen:
            raise HeadSpecError(f"{what}[{i}] = [{layer}, {head}] is a duplicate", "list each head once")
        seen.add((layer, head))
        out.append((layer, head))
    return sorted(out)


def to_kv_heads(
    heads: Iterable[Sequence[int]],
    shape: "ModelShape",
    policy: str,
    *,
    scores: np.ndarray | None = None,
) -> list[Head]:
    """Map query heads to KV heads ``[(layer, kv_head), ...]`` (sorted). Query head ``h`` reads KV head ``h // groups``.

    Policies:

    - ``any``: a KV head is selected if any of its ``groups`` query heads is.
    - ``all``: a KV head is selected only if all of its query heads are.
    - ``mean``: a fixed budget over the whole model: the ``ceil(len(heads) / groups)`` KV heads
      with the highest mean query-head score (``scores`` ``[L, H]`` required), ties by
      ``(layer, kv_head)`` ascending. The selection contributes only its size, so the KV budget
      matches the query-head budget whichever heads were picked. No heads -> no KV heads.
    With ``groups == 1`` (MHA) ``any`` and ``all`` return the heads themselves.
    """
    if policy not in KV_POLICIES:
        raise HeadSpecError(f"unknown kv_policy {policy!r}", f"use one of {', '.join(KV_POLICIES)}")
    L, H, KV = _shape_tuple(shape)
    g = H // KV
    hs = check_heads(heads, L, H)
    if policy == "mean":
        if scores is None:
            raise HeadSpecError("kv_policy 'mean' ranks KV heads by their query heads' mean score but no scores were given",
                                "pass scores=[L, H] array (the spec's selection score)")
        s = _check_matrix("scores", scores, (L, H))
        n_kv = math.ceil(len(hs) / g)
        if n_kv == 0:
            return []
        kv_mean = s.reshape(L, KV, g).mean(axis=2)
        return sorted(_rank(kv_mean, None, descending=True)[:n_kv])
    count: dict[Head, int] = {}
    for layer, head in hs:
        kv = (layer, head // g)
        count[kv] = count.get(kv, 0) + 1
    need = 1 if policy == "any" else g
    return sorted(kv for kv, c in count.items() if c >= need)


def kv_to_query_heads(kv_heads: Iterable[Sequence[int]], shape: "ModelShape") -> list[Head]:
    """Expand ``[(layer, kv_head), ...]`` to every query head that reads them, sorted."""
    L, H, KV = _shape_tuple(shape)
    g = H // KV
    kvs = check_heads(kv_heads, L, KV, what="kv_heads")
    return sorted((layer, kv * g + j) for layer, kv in kvs for j in range(g))
