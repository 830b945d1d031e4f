"""Paired statistics: CIs of a paired difference and McNemar's exact test.

All take the per-sample scores of the *same* samples under the baseline and the variant.

- :func:`newcombe_paired_ci`: Newcombe's hybrid score interval (1998, method 10) for the difference
  of two paired proportions (0/1 outcomes). Built from the Wilson intervals of the two marginal
  proportions and their correlation, so it never collapses to a point: with no discordant pairs
  (n = 40, 30 right) it is about +/- 0.044, where a bootstrap of the differences gives [0, 0].
- :func:`paired_bootstrap_ci`: percentile bootstrap of the mean difference (any metric).
- :func:`mcnemar_exact`: exact two-sided McNemar test on the discordant pairs.
- :func:`paired_ci`: Newcombe for binary outcomes, the bootstrap otherwise (what the report uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import stats as _sps

#: Resamples are drawn in chunks of ``max(1, CHUNK_ELEMENTS // n)`` rows to bound memory.
CHUNK_ELEMENTS = 1 << 22


def bootstrap_means(diff, n_boot: int = 10000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``diff``.

    Algorithm (so it can be reproduced): ``rng = np.random.default_rng(seed)``; for each chunk of
    ``c`` resamples (``c = max(1, CHUNK_ELEMENTS // n)``, the last chunk smaller)
    ``idx = rng.integers(0, n, size=(c, n))`` and the means are ``diff[idx].mean(axis=1)``.
    """
    d = np.asarray(diff, dtype=float)
    n = d.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // n)
    out = np.empty(n_boot)
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(c, n))
        out[done:done + c] = d[idx].mean(axis=1)
        done += c
    return out


def paired_bootstrap_ci(baseline, variant, *, n_boot: int = 10000, seed: int = 0,
                        alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` CI of ``mean(variant - baseline)`` over paired samples.

    Resamples whole pairs (the differences), so the pairing is kept. Quantiles use numpy's
    default (linear) interpolation.
    """
    b = np.asarray(baseline, dtype=float)
    v = np.asarray(variant, dtype=float)
    if b.shape != v.shape:
        raise ValueError(f"paired arrays differ in shape: {b.shape} vs {v.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    means = bootstrap_means(v - b, n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def is_binary(values) -> bool:
    a = np.asarray(values, dtype=float)
    return a.size > 0 and bool(np.all((a == 0) | (a == 1)))


@dataclass(frozen=True)
class McNemar:
    """``n_lost``: baseline right, variant wrong; ``n_gained``: the reverse; exact two-sided p."""

    n_lost: int
    n_gained: int
    p_value: float


def binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided binomial p-value of ``k`` successes in ``n`` trials at p = 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def _paired_binary(baseline, variant, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(baseline, variant)`` as float arrays of one shape holding only 0/1, or a ValueError naming ``what``."""
    b = np.asarray(baseline, dtype=float)
    v = np.asarray(variant, dtype=float)
    if b.shape != v.shape:
        raise ValueError(f"paired arrays differ in shape: {b.shape} vs {v.shape}")
    if not (is_binary(b) and is_binary(v)):
        raise ValueError(f"{what} needs binary (0/1) outcomes")
    return b, v


def mcnemar_exact(baseline, variant) -> McNemar:
    """McNemar's exact test on paired 0/1 outcomes: binomial test of the discordant pairs at 1/2."""
    b, v = _paired_binary(baseline, variant, "McNemar's test")
    lost = int(np.sum((b == 1) & (v == 0)))
    gained = int(np.sum((b == 0) & (v == 1)))
    return McNemar(lost, gained, binom_two_sided_half(lost, lost + gained))


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy's ``binomtest(...).proportion_ci``)."""
    if n == 0:
        return 0.0, 1.0
    ci = _sps.binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe_paired_ci(baseline, variant, *, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score CI (method 10, no continuity correction) of ``mean(variant) - mean(baseline)``
    for paired 0/1 outcomes.

    With ``p_v, p_b`` the marginal proportions, ``(l_v, u_v)``, ``(l_b, u_b)`` their Wilson intervals
    and ``phi`` the phi coefficient of the 2x2 table of pairs (0 where a margin is empty)::

        low  = d - sqrt((p_v - l_v)^2 - 2 phi (p_v - l_v)(u_b - p_b) + (u_b - p_b)^2)
        high = d + sqrt((u_v - p_v)^2 - 2 phi (u_v - p_v)(p_b - l_b) + (p_b - l_b)^2)
    """
    b, v = _paired_binary(baseline, variant, "Newcombe's paired interval")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = b.size
    both = int(np.sum((v == 1) & (b == 1)))
    v_only = int(np.sum((v == 1) & (b == 0)))
    b_only = int(np.sum((v == 0) & (b == 1)))
    neither = n - both - v_only - b_only
    pv, pb = (both + v_only) / n, (both + b_only) / n
    lv, uv = wilson_ci(both + v_only, n, alpha)
    lb, ub = wilson_ci(both + b_only, n, alpha)
    denom = (both + v_only) * (b_only + neither) * (both + b_only) * (v_only + neither)
    phi = (both * neither - v_only * b_only) / math.sqrt(denom) if denom > 0 else 0.0
    d = pv - pb
    low = d - math.sqrt(max(0.0, (pv - lv) ** 2 - 2 * phi * (pv - lv) * (ub - pb) + (ub - pb) ** 2))
    high = d + math.sqrt(max(0.0, (uv - pv) ** 2 - 2 * phi * (uv - pv) * (pb - lb) + (pb - lb) ** 2))
    return max(-1.0, low), min(1.0, high)


def paired_ci(baseline, variant, *, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, str]:
    """``(low, high, method)``: Newcombe's interval for 0/1 outcomes, else the paired bootstrap."""
    if is_binary(baseline) and is_binary(variant):
        return (*newcombe_paired_ci(baseline, variant, alpha=alpha), "newcombe")
    return (*paired_bootstrap_ci(baseline, variant, n_boot=n_boot, seed=seed, alpha=alpha), "bootstrap")
