"""Issue #17, statistics: Newcombe's paired interval (no [0, 0] without discordant pairs), seeds pooled
from the paired differences (not averaged bounds), one point per size on the curves, the verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core_eval.report import build_report
from core_eval.report.stats import newcombe_paired_ci, paired_bootstrap_ci
from report_fixtures import summary, synthetic_lm_eval_run

MODEL = "/models/tiny"


def test_newcombe_does_not_collapse_without_discordant_pairs():
    b = (np.arange(40) < 30).astype(float)
    lo, hi = newcombe_paired_ci(b, b.copy())
    assert paired_bootstrap_ci(b, b.copy(), n_boot=500) == (0.0, 0.0)  # the old interval
    assert lo < -0.02 and hi > 0.02 and lo == pytest.approx(-hi)
    lo2, hi2 = newcombe_paired_ci(b[:10], b[:10].copy())
    assert hi2 - lo2 > hi - lo  # fewer pairs, wider interval


def test_newcombe_covers_the_true_difference():
    rng = np.random.default_rng(0)
    n, hits, reps = 40, 0, 1500
    p_base, p_flip = 0.8, 0.15
    true = p_base * (1 - p_flip) + (1 - p_base) * 0.05 - p_base  # variant: base flipped 1->0 at 15%, 0->1 at 5%
    for _ in range(reps):
        b = (rng.random(n) < p_base).astype(float)
        u = rng.random(n)
        v = np.where(b == 1, (u >= p_flip).astype(float), (u < 0.05).astype(float))
        lo, hi = newcombe_paired_ci(b, v)
        hits += lo <= true <= hi
    assert 0.92 <= hits / reps <= 0.99


def _seeded_runs(root, base, rng):
    synthetic_lm_eval_run(root / "base", model=MODEL, values={"t": {"acc": base}}, summary=summary(MODEL, "none", 0))
    drops = {"top": [0.4], "random": [0.05, 0.15, 0.3], "bottom": [0.0]}
    for rule, ds in drops.items():
        for s, drop in enumerate(ds):
            vals = [0 if (x and rng.random() < drop) else x for x in base]
            sel = {"k": 2, "seed": s} if rule == "random" else {"k": 2}
            synthetic_lm_eval_run(root / f"{rule}{s}", model=MODEL, values={"t": {"acc": vals}},
                                  summary=summary(MODEL, rule, 2, **sel))


def test_seeds_are_pooled_from_the_paired_differences(tmp_path):
    rng = np.random.default_rng(3)
    base = (rng.random(40) < 0.8).astype(int).tolist()
    _seeded_runs(tmp_path, base, rng)
    rep = build_report([tmp_path], n_boot=200)
    per_seed = rep.comparison[rep.comparison.rule == "random"]
    assert len(per_seed) == 3
    (pooled,) = rep.causal[rep.causal.rule == "random"].itertuples()
    assert pooled.n_runs == 3 and pooled.n == 120
    vals = [pd.read_json(next((tmp_path / f"random{s}").glob("*/samples_t_*.jsonl")), lines=True)["acc"].to_numpy(float)
            for s in range(3)]
    b = np.tile(np.array(base, float), 3)
    v = np.concatenate(vals)
    assert pooled.delta == pytest.approx(v.mean() - b.mean())
    assert (pooled.ci_low, pooled.ci_high) == pytest.approx(newcombe_paired_ci(b, v))
    assert (pooled.ci_low, pooled.ci_high) != pytest.approx((per_seed.ci_low.mean(), per_seed.ci_high.mean()))
    bottom = rep.causal[rep.causal.rule == "bottom"].iloc[0]
    assert bottom.n_lost == bottom.n_gained == 0 and bottom.ci_low < 0 < bottom.ci_high  # not [0, 0] at n = 40
    # curves: one point (one marker, one interval) per size and rule
    cu = rep.curves[rep.curves.rule == "random"]
    assert list(cu.n_heads) == [0, 2] and cu.iloc[1].ci_low == pooled.ci_low
    # the verdict: top vs each control, paired run against run, control seeds pooled
    ver = rep.verdict.set_index("control")
    assert list(ver.index) == ["bottom", "random"]
    top = pd.read_json(next((tmp_path / "top0").glob("*/samples_t_*.jsonl")), lines=True)["acc"].to_numpy(float)
    r = ver.loc["random"]
    assert r.n == 120 and r.n_control_runs == 3
    assert r["diff"] == pytest.approx(np.tile(top, 3).mean() - v.mean())
    assert (r.ci_low, r.ci_high) == pytest.approx(newcombe_paired_ci(v, np.tile(top, 3)))
    want = "yes" if r.ci_high < 0 else "no" if r.ci_low > 0 else "inconclusive"
    assert r.verdict == want and ver.loc["bottom"].verdict == "yes"
    assert "3 random draws pooled" in r.summary
    md = rep.to_markdown()
    assert md.index("**Verdict**") < md.index("## Leaderboard") and r.summary in md
