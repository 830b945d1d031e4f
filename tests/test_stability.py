"""Head-set stability (issue 17, item 4): the bootstrap in the head spec, and ``compare-specs``.

Oracles: top-k membership of a head whose lead hangs on one sample follows the binomial law of
that sample's count in a resample (scipy.stats.binom), with the selection's own tie rule deciding
the draw; identical samples give one certain ranking equal to ``select_heads``; the spec's
section equals a recomputation from the per-sample masses ``score`` used; Spearman / Kendall of
``compare_specs`` equal a Pearson correlation of ranks and a brute-force count of concordant pairs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import binom

import core_eval.scoring.ram as R
from core_eval.cli import main as cli_main
from core_eval.scoring.compare import compare_specs
from core_eval.scoring.stability import bootstrap_stability
from core_eval.spec import HeadSpec, HeadSpecError, load_head_spec, select_heads, spec_from_scores

REPO = Path(__file__).resolve().parents[1]
ORGANISM = REPO / "head_masks" / "organism.json"
GRID_KNOBS = {"grid": 3, "image_size": 96}


# --------------------------------------------------------------------------- the bootstrap


@pytest.mark.parametrize("lead_first", [True, False])
def test_membership_follows_the_binomial_law(lead_first):
    """Head A scores 1 on one sample of n (mean 1/n); head B scores 1/n on every sample. A beats B
    in a resample iff the special sample is drawn more than once; at exactly once they tie (equal
    lift too) and the lower index wins. So P(A in top-1) = P(count >= 1) if A has the lower index,
    else P(count >= 2), count ~ Binomial(n, 1/n)."""
    n = 10
    x = np.zeros((n, 1, 3))
    a, b = (0, 1) if lead_first else (1, 0)
    x[0, 0, a] = 1.0
    x[:, 0, b] = 1.0 / n
    st = bootstrap_stability(x, x.copy(), k=1, n_boot=20000, seed=0)
    p_a = 1 - binom.cdf(0 if lead_first else 1, n, 1 / n)
    got = np.asarray(st["in_top_k"])[0]
    assert abs(got[a] - p_a) < 0.015 and abs(got[b] - (1 - p_a)) < 0.015 and got[2] == 0
    assert got.sum() == pytest.approx(1.0)
    assert st["top_sets"][0]["heads"] == [[0, int(np.argmax(got))]]  # the most frequent set first
    # "exact" compares with the set the spec itself selects from the full-sample means
    (point,) = select_heads(x.mean(0), "top", k=1, tiebreak=x.mean(0))
    assert st["set_exact"] == pytest.approx(got[point[1]])


def test_identical_samples_give_one_certain_ranking():
    rng = np.random.default_rng(3)
    row = rng.random((4, 6))
    row[1, 2] = row[3, 4]  # a tie, broken by the lift
    lift_row = rng.random((4, 6))
    st = bootstrap_stability(np.repeat(row[None], 9, 0), np.repeat(lift_row[None], 9, 0), k=5, n_boot=50)
    want_top = select_heads(row, "top", k=5, tiebreak=lift_row)
    order = sorted(((l, h) for l in range(4) for h in range(6)), key=lambda x: (-row[x], -lift_row[x], x))
    rank = {head: i + 1 for i, head in enumerate(order)}
    in_top = np.asarray(st["in_top_k"])
    assert sorted(map(tuple, np.argwhere(in_top == 1).tolist())) == want_top and set(np.unique(in_top)) == {0, 1}
    for key in ("rank_median", "rank_lo", "rank_hi"):
        assert np.asarray(st[key]).tolist() == [[rank[(l, h)] for h in range(6)] for l in range(4)]
    assert st["set_exact"] == 1 and st["set_jaccard_mean"] == 1
    np.testing.assert_allclose(st["score_lo"], row)
    np.testing.assert_allclose(st["score_hi"], row)


def test_bootstrap_invariants_and_seed():
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 5))
    st = bootstrap_stability(x, None, k=3, n_boot=300, seed=1)
    assert np.asarray(st["in_top_k"]).sum() == pytest.approx(3)  # every resample has exactly k heads on top
    lo, med, hi = (np.asarray(st[k]) for k in ("rank_lo", "rank_median", "rank_hi"))
    assert (lo <= med).all() and (med <= hi).all() and lo.min() >= 1 and hi.max() <= 15
    assert (np.asarray(st["score_lo"]) <= x.mean(0) + 1e-12).all() and (np.asarray(st["score_hi"]) >= x.mean(0) - 1e-12).all()
    assert sum(s["freq"] for s in st["top_sets"]) <= 1 + 1e-12 and st["tiebreak"] is None
    assert bootstrap_stability(x, None, k=3, n_boot=300, seed=1) == st
    assert bootstrap_stability(x, None, k=3, n_boot=300, seed=2)["in_top_k"] != st["in_top_k"]


# --------------------------------------------------------------------------- the spec section


def test_spec_without_stability_is_unchanged(tmp_path):
    raw = json.loads(ORGANISM.read_text())
    raw.pop("stability", None)  # the shipped spec has one; a file written before the section existed has none
    p = tmp_path / "old.json"
    p.write_text(json.dumps(raw))
    spec = load_head_spec(p)
    assert spec.stability is None
    assert json.loads(spec.to_json()) == raw  # a v1 file without the section reads and writes as before


def _with_stability(spec, **changes):
    L, H = spec.model["num_layers"], spec.model["num_heads"]
    st = bootstrap_stability(np.repeat(np.asarray(spec.scores["ram"])[None], 3, 0), None, k=2, n_boot=10)
    return {**spec.to_dict(), "stability": {**st, **changes}}, L, H


def test_stability_section_roundtrip_and_validation(tmp_path):
    spec = load_head_spec(ORGANISM)
    d, L, H = _with_stability(spec)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    back = load_head_spec(p)
    assert back.stability["k"] == 2 and np.asarray(back.stability["in_top_k"]).shape == (L, H)
    assert HeadSpec.from_json(back.to_json()) == back
    assert back.with_selection("random", k=2, seed=1).stability == back.stability  # kept with a new selection
    bad = [({"bogus": 1}, "unknown stability key"),
           ({"in_top_k": [[1.5] * H] * L}, r"stability\.in_top_k has values outside"),
           ({"rank_lo": [[1.0] * H] * (L - 1)}, r"stability\.rank_lo has \d+ rows"),
           ({"score": "nosuch"}, r"stability\.score names 'nosuch'"),
           ({"top_sets": [{"heads": [[L, 0]], "freq": 1.0}]}, r"stability\.top_sets\[0\]\.heads"),
           ({"n_boot": 0}, r"stability\.n_boot")]
    for change, pattern in bad:
        d, _, _ = _with_stability(spec, **change)
        p.write_text(json.dumps(d))
        with pytest.raises(HeadSpecError, match=pattern) as ei:
            load_head_spec(p)
        assert str(p) in str(ei.value)


def test_score_records_the_bootstrap_of_its_own_samples(tiny_dir, tmp_path, monkeypatch, capsys):
    """``core-eval score`` writes the section from the very per-sample masses it scored, and prints it."""
    kept = {}
    real = R.run_scoring

    def keep(*a, **k):
        kept["per_sample"] = real(*a, **k)
        return kept["per_sample"]

    monkeypatch.setattr(R, "run_scoring", keep)
    out = tmp_path / "spec.json"
    rc = cli_main(["score", "--model", str(tiny_dir("llava")), "--out", str(out), "--n", "8", "--batch-size", "4",
                   "--knobs", json.dumps(GRID_KNOBS), "--frac", "0.25", "--bootstrap", "200", "--seed", "3"])
    printed = capsys.readouterr().out
    assert rc == 0
    spec = load_head_spec(out)
    st = spec.stability
    ps = kept["per_sample"]
    use = (ps["n_region"] > 0) & (ps["rows"] > 0)
    ram = ps["ram"][use]
    want = bootstrap_stability(ram, ram / ps["region_frac"][use][:, None, None], k=len(spec.heads), n_boot=200,
                               seed=3, frac=0.25)
    assert st == json.loads(json.dumps(want))
    assert st["n_samples"] == spec.scorer["n_used"] and st["k"] == len(spec.heads) == 3
    assert f"stability (bootstrap over samples: 200 resamples of {st['n_samples']} samples)" in printed
    assert "in the top-3" in printed
    rc = cli_main(["score", "--model", str(tiny_dir("llava")), "--out", str(tmp_path / "plain.json"), "--n", "4",
                   "--knobs", json.dumps(GRID_KNOBS), "--bootstrap", "0"])
    assert rc == 0 and load_head_spec(tmp_path / "plain.json").stability is None
    assert "stability" not in capsys.readouterr().out


# --------------------------------------------------------------------------- compare-specs


def _spec(ram, lift=None, name="m", **kw):
    scores = {"ram": ram} if lift is None else {"ram": ram, "lift": lift}
    L, H = ram.shape
    return spec_from_scores(scores, {"name": name, "num_layers": L, "num_heads": H, "num_kv_heads": H,
                                     "head_dim": 8}, {"name": "ram-v1"}, **kw)


def _pearson_of_ranks(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties in these arrays
    return float(np.corrcoef(ra, rb)[0, 1])


def _kendall_brute(a, b):
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in itertools.combinations(range(len(a)), 2))
    return s / (len(a) * (len(a) - 1) / 2)


def test_compare_metrics_against_brute_force():
    rng = np.random.default_rng(7)
    a = rng.random((4, 6))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1) * 0.5 + 0.01 * rng.random(a.shape)
    c = a ** 3  # same ranking as a
    specs = [_spec(a, k=3), _spec(b, k=3), _spec(c, rule="random", k=3, seed=4)]
    cmp = compare_specs(specs, k=4)
    assert cmp.k == 4 and len(cmp.pairs) == 3
    tops = [set(sorted(((l, h) for l in range(4) for h in range(6)), key=lambda x: (-s[x], x))[:4]) for s in (a, b, c)]
    for row, (i, j) in zip(cmp.pairs.itertuples(index=False), [(0, 1), (0, 2), (1, 2)]):
        x, y = (a, b, c)[i].ravel(), (a, b, c)[j].ravel()
        assert row.spearman == pytest.approx(_pearson_of_ranks(x, y), abs=1e-12)
        assert row.kendall == pytest.approx(_kendall_brute(x, y), abs=1e-12)
        assert getattr(row, "top_4_overlap") == len(tops[i] & tops[j])
        assert getattr(row, "top_4_jaccard") == pytest.approx(len(tops[i] & tops[j]) / len(tops[i] | tops[j]))
        si, sj = set(specs[i].heads), set(specs[j].heads)
        assert row.selected_overlap == len(si & sj)
        assert row.max_abs_diff == pytest.approx(np.abs(x - y).max())
    assert cmp.pairs.loc[1, "spearman"] == pytest.approx(1.0) and cmp.pairs.loc[1, "kendall"] == pytest.approx(1.0)
    assert cmp.pairs.loc[1, "top_4_overlap"] == 4  # a and a**3 share their top set, not their selection
    assert cmp.pairs.loc[1, "selected_overlap"] == 0  # a random control excludes the top set


def test_compare_refuses_different_shapes(tmp_path, capsys):
    a = _spec(np.random.default_rng(0).random((3, 4)), k=1, name="small").write(tmp_path / "a.json")
    b = _spec(np.random.default_rng(1).random((4, 4)), k=1, name="big").write(tmp_path / "b.json")
    rc = cli_main(["compare-specs", str(a), str(b), "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "a.json" in err and "b.json" in err and "3 layers x 4 heads" in err and "4 layers x 4 heads" in err
    assert not (tmp_path / "cmp").exists()


def test_compare_specs_cli_on_scored_specs(tiny_dir, tmp_path, capsys):
    """Three specs of one model: two query-row rules and another seed."""
    model = str(tiny_dir("llava"))
    paths = []
    for name, extra in [("answer", []), ("last", ["--query-rows", "last"]), ("seed1", ["--seed", "1"])]:
        p = tmp_path / f"{name}.json"
        assert cli_main(["score", "--model", model, "--out", str(p), "--n", "8", "--batch-size", "4",
                         "--knobs", json.dumps(GRID_KNOBS), "--bootstrap", "50", *extra]) == 0
        paths.append(p)
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert cli_main(["compare-specs", *map(str, paths), "--frac", "0.25", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "spearman" in printed and "kendall" in printed and "answer.json" in printed
    pairs = pd.read_csv(out / "pairs.csv")
    want = compare_specs([load_head_spec(p) for p in paths], frac=0.25).pairs
    assert len(pairs) == 3
    np.testing.assert_allclose(pairs["spearman"], want["spearman"])
    np.testing.assert_array_equal(pairs["top_3_overlap"], want["top_3_overlap"])
    specs_csv = pd.read_csv(out / "specs.csv")
    assert specs_csv["query_rows"].tolist() == ["answer", "last", "answer"] and specs_csv["seed"].tolist() == [0, 0, 1]
    with Image.open(out / "score_diff.png") as im:
        assert im.width >= 800


def test_every_stability_field_is_documented():
    from core_eval.spec.format import STABILITY_KEYS

    doc = (REPO / "docs" / "stability.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    assert rows == set(STABILITY_KEYS)
    written = bootstrap_stability(np.random.default_rng(0).random((5, 2, 3)), None, k=1, n_boot=5)
    assert set(written) == set(STABILITY_KEYS)  # the writer fills every documented field
