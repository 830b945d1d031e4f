"""Rank agreement between a RAM ranking and a causal effect: Spearman and the most-disagreeing heads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ascending ranks 1..n, ties get their average rank."""
    x = np.asarray(x, dtype=float)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    avg = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(n)
    ranks[order] = np.repeat(avg, np.diff(bounds))
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties) of two equally shaped arrays, over the
    entries finite in both. ``NaN`` if fewer than 2 such entries or either side is constant."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: shapes differ ({a.shape} vs {b.shape})")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return float("nan")
    ra, rb = _rankdata(a), _rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if den == 0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / den, -1.0, 1.0))


@dataclass
class Comparison:
    """RAM vs a causal effect: Spearman ``rho`` over ``n`` heads and the most-disagreeing heads.

    ``table`` columns: ``kind`` (``high RAM, low effect`` or ``low RAM, high effect``), ``layer``,
    ``head``, ``ram``, ``effect``, ``ram_rank``, ``effect_rank`` (1 = highest), ``rank_diff``
    (``effect_rank - ram_rank``: positive = RAM ranks the head higher than its effect does).
    """

    rho: float
    n: int
    table: object  # pandas.DataFrame
    x_name: str = "ram"
    y_name: str = "effect"

    def format(self) -> str:
        rho = "n/a" if not math.isfinite(self.rho) else f"{self.rho:+.3f}"
        head = f"Spearman({self.x_name}, {self.y_name}) = {rho} over {self.n} heads"
        if len(self.table) == 0:
            return head + "\n(no disagreeing heads)"
        return head + "\n" + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def __str__(self) -> str:
        return self.format()


def compare(ram, effect, top: int = 10, *, measured=None, x_name: str = "ram", y_name: str = "effect"
            ) -> Comparison:
    """Spearman rank correlation between ``ram`` and ``effect`` (``[L, H]``) and the ``top`` heads of
    each disagreement direction (largest rank differences).

    Only heads finite in both (and in ``measured`` when given) take part.
    """
    import pandas as pd

    ram = np.asarray(ram, dtype=float)
    effect = np.asarray(effect, dtype=float)
    if ram.shape != effect.shape or ram.ndim != 2:
        raise ValueError(f"compare needs two [L, H] arrays of the same shape, got {ram.shape} and {effect.shape}")
    ok = np.isfinite(ram) & np.isfinite(effect)
    if measured is not None:
        ok &= np.asarray(measured, dtype=bool)
    idx = np.argwhere(ok)
    x, y = ram[ok], effect[ok]
    rho = spearman(x, y)
    n = int(x.size)
    cols = ["kind", "layer", "head", x_name, y_name, f"{x_name}_rank", f"{y_name}_rank", "rank_diff"]
    if n == 0:
        return Comparison(rho, 0, pd.DataFrame(columns=cols), x_name, y_name)
    rx = n + 1 - _rankdata(x)  # 1 = highest
    ry = n + 1 - _rankdata(y)
    diff = ry - rx
    rows = []
    order_hi = [i for i in np.argsort(-diff, kind="mergesort") if diff[i] > 0][:top]
    order_lo = [i for i in np.argsort(diff, kind="mergesort") if diff[i] < 0][:top]
    for kind, order in ((f"high {x_name}, low {y_name}", order_hi), (f"low {x_name}, high {y_name}", order_lo)):
        for i in order:
            rows.append([kind, int(idx[i, 0]), int(idx[i, 1]), float(x[i]), float(y[i]), float(rx[i]),
                         float(ry[i]), float(diff[i])])
    return Comparison(rho, n, pd.DataFrame(rows, columns=cols), x_name, y_name)
