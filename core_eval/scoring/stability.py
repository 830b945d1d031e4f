"""How stable is the head ranking? A bootstrap over the scored samples.

Each resample draws ``n`` of the ``n`` used samples with replacement, re-computes every head's
mean score (and tie-break) and ranks the heads with the selection's own rule (score descending,
tie-break descending, then index: :func:`~core_eval.spec.selection.select_heads` ``top``).
Resample means are rounded to :data:`DECIMALS` decimals before ranking, so that heads tied in the
data stay tied (a different summation order would otherwise break the tie by rounding noise) and
the index rule decides, as it does for the spec's own selection. The
result is the head spec's optional ``stability`` section (fields:
:data:`~core_eval.spec.format.STABILITY_KEYS`, docs/stability.md).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

METHOD = "bootstrap over samples"
DECIMALS = 12


def _ranks(score: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """``(B, N)`` scores -> ``(B, N)`` ranks, 1 = best (score desc, tiebreak desc, index asc)."""
    B, N = score.shape
    idx = np.arange(N)
    ranks = np.empty((B, N), dtype=np.int64)
    for b in range(B):
        order = np.lexsort((idx, -tiebreak[b], -score[b]))
        ranks[b, order] = np.arange(1, N + 1)
    return ranks


def bootstrap_stability(score: np.ndarray, tiebreak: np.ndarray | None, k: int, *, n_boot: int = 1000,
                        seed: int = 0, ci: float = 0.95, frac: float | None = None, score_name: str = "ram",
                        tiebreak_name: str | None = "lift", n_sets: int = 5) -> dict:
    """Bootstrap the ranking of per-sample head scores.

    Args:
        score: ``(n, L, H)`` per-sample scores of the used samples (e.g. RAM).
        tiebreak: ``(n, L, H)`` per-sample tie-break values (e.g. lift), or ``None``.
        k: size of the top-k set whose membership is counted.
        n_boot / seed / ci: resamples, seed of ``numpy.random.default_rng``, interval coverage.
    Returns the ``stability`` section (JSON-ready: arrays as ``[L][H]`` lists).
    """
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 3 or score.shape[0] < 1:
        raise ValueError(f"bootstrap_stability: score must be (n_samples, L, H) with n >= 1, got {score.shape}")
    n, L, H = score.shape
    if not 0 <= k <= L * H:
        raise ValueError(f"bootstrap_stability: k={k} outside 0..{L * H}")
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"bootstrap_stability: n_boot={n_boot} must be >= 1 and ci={ci} in (0, 1)")
    tb = np.zeros_like(score) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n  # (B, n): resample = weighted mean
    means = weights @ score.reshape(n, L * H)
    tb_means = weights @ tb.reshape(n, L * H)
    ranks = _ranks(np.round(means, DECIMALS), np.round(tb_means, DECIMALS))  # (B, L*H)
    # the full-sample set exactly as the spec selects it (mean over samples, as aggregate() does)
    full = _ranks(score.mean(0).reshape(1, -1), tb.mean(0).reshape(1, -1))[0]
    in_top = ranks <= k
    point = set(np.flatnonzero(full <= k).tolist())
    jaccard, exact, sets = [], 0, Counter()
    for row in in_top:
        s = frozenset(np.flatnonzero(row).tolist())
        sets[s] += 1
        union = len(s | point)
        jaccard.append(len(s & point) / union if union else 1.0)
        exact += s == point
    lo_q, hi_q = (1 - ci) / 2, (1 + ci) / 2

    def grid(a):
        return np.asarray(a, dtype=np.float64).reshape(L, H).tolist()

    return {
        "method": METHOD, "score": score_name, "tiebreak": tiebreak_name if tiebreak is not None else None,
        "n_boot": int(n_boot), "seed": int(seed), "ci": float(ci), "n_samples": int(n), "k": int(k),
        "frac": None if frac is None else float(frac),
        "set_exact": exact / n_boot, "set_jaccard_mean": float(np.mean(jaccard)),
        "top_sets": [{"heads": [[int(i // H), int(i % H)] for i in sorted(s)], "freq": c / n_boot}
                     for s, c in sets.most_common(n_sets)],
        "in_top_k": grid(in_top.mean(0)),
        "rank_median": grid(np.median(ranks, axis=0)),
        "rank_lo": grid(np.quantile(ranks, lo_q, axis=0, method="lower")),
        "rank_hi": grid(np.quantile(ranks, hi_q, axis=0, method="higher")),
        "score_lo": grid(np.quantile(means, lo_q, axis=0)),
        "score_hi": grid(np.quantile(means, hi_q, axis=0)),
    }


def _by_layer(heads) -> str:
    from core_eval.spec import heads_by_layer

    return str(heads_by_layer([tuple(h) for h in heads]))


def stability_summary(stability: dict, *, show: int = 5) -> str:
    """A few readable lines: how often the top-k set is recovered, the heads most often in it."""
    st = stability
    k = st["k"]
    in_top = np.asarray(st["in_top_k"])
    L, H = in_top.shape
    lines = [f"stability ({st['method']}: {st['n_boot']} resamples of {st['n_samples']} samples): the top-{k} "
             f"set is recovered exactly in {st['set_exact']:.0%} of resamples (mean Jaccard "
             f"{st['set_jaccard_mean']:.2f})"]
    for s in st.get("top_sets", [])[:3]:
        lines.append(f"  {s['freq']:5.0%}  {_by_layer(s['heads'])}")
    order = np.argsort(-in_top.ravel(), kind="stable")[:max(show, k)]
    ci = f"{st.get('ci', 0.95):.0%}"
    parts = []
    for i in order:
        layer, head = divmod(int(i), H)
        rank = ""
        if "rank_median" in st:
            rank = (f", rank {st['rank_median'][layer][head]:g} [{st['rank_lo'][layer][head]:g}, "
                    f"{st['rank_hi'][layer][head]:g}]")
        parts.append(f"L{layer}H{head} {in_top[layer, head]:.0%}{rank}")
    lines.append(f"  in the top-{k} (share of resamples, median rank [{ci}]): " + "; ".join(parts))
    return "\n".join(lines)
