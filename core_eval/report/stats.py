"""Paired statistics: bootstrap CI of a mean difference and McNemar's exact test.

Both take the per-sample scores of the *same* samples under the baseline and the variant.
Pure numpy / stdlib (scipy is only used by the tests, as an independent check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

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


def mcnemar_exact(baseline, variant) -> McNemar:
    """McNemar's exact test on paired 0/1 outcomes: binomial test of the discordant pairs at 1/2."""
    b = np.asarray(baseline, dtype=float)
    v = np.asarray(variant, dtype=float)
    if b.shape != v.shape:
        raise ValueError(f"paired arrays differ in shape: {b.shape} vs {v.shape}")
    if not (is_binary(b) and is_binary(v)):
        raise ValueError("McNemar's test needs binary (0/1) outcomes")
    lost = int(np.sum((b == 1) & (v == 0)))
    gained = int(np.sum((b == 0) & (v == 1)))
    return McNemar(lost, gained, binom_two_sided_half(lost, lost + gained))
