"""The sparse retention verdict: does hybrid sparse attention keep >= 95% of the baseline, per task, and CoRe
full heads vs random full heads at each size. Hand-made lm-eval runs with chosen per-sample correctness; the
expected numbers are computed by hand from those choices."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from core_eval.report import ReportError, build_report
from core_eval.report.cli import add_report_parser
from core_eval.report.stats import newcombe_paired_ci
from report_fixtures import summary, synthetic_lm_eval_run

MODEL = "/models/tiny"


def _ones(n: int, lost=()) -> list[int]:
    return [0 if i in set(lost) else 1 for i in range(n)]


# task "a": 20 docs, the baseline gets all 20 right. task "b": 400 docs, baseline right on the first 320.
# task "c": 20 docs, a lower-is-better metric "err" (1 = wrong), the baseline wrong on 4.
B_BASE = _ones(400, lost=range(320, 400))
RUNS = {  # name: (rule, full heads, seed, {task: values})
    "core4": ("top", 4, None, {"a": _ones(20, lost=[19]), "b": _ones(400, lost=[0, 1, *range(320, 400)]),
                               "c": [1, 1, 1, 1, 1] + [0] * 15}),
    "rand4s0": ("random", 4, 0, {"a": _ones(20, lost=range(5)), "b": B_BASE, "c": [1] * 8 + [0] * 12}),
    "rand4s1": ("random", 4, 1, {"a": _ones(20, lost=range(5, 12)), "b": B_BASE, "c": [1] * 8 + [0] * 12}),
    "core2": ("top", 2, None, {"a": _ones(20, lost=range(12)), "b": B_BASE, "c": [1] * 4 + [0] * 16}),
    "rand2s0": ("random", 2, 0, {"a": _ones(20, lost=range(16)), "b": B_BASE, "c": [1] * 4 + [0] * 16}),
}


def _sparse(rule: str, k: int, seed) -> dict:
    sel = {"k": k, **({"seed": seed} if seed is not None else {})}
    s = summary(MODEL, rule, k, variant="text_only", kind="sparse", **sel)
    s["variant"]["options"] = {"sink": 4, "window": 16}
    return s


def _write(root, name: str, values: dict, s: dict) -> None:
    path = synthetic_lm_eval_run(root / name, model=MODEL, summary=s,
                                 values={"a": {"acc": values["a"]}, "b": {"acc": values["b"]},
                                         "c": {"err": values["c"]}})
    data = json.loads(path.read_text())
    data["higher_is_better"]["c"]["err"] = False
    path.write_text(json.dumps(data))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _write(root, "base", {"a": _ones(20), "b": B_BASE, "c": [1] * 4 + [0] * 16}, summary(MODEL, "none", 0))
    for name, (rule, k, seed, values) in RUNS.items():
        _write(root, name, values, _sparse(rule, k, seed))
    return root


def _row(rep, task: str, rule: str, k: int, seed=None):
    r = rep.retention
    hit = r[(r.task == task) & (r.rule == rule) & (r.n_heads == k)]
    if seed is not None:
        hit = hit[hit.label.str.contains(f"seed={seed}")]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_retention_values_and_verdicts(runs):
    rep = build_report([runs], n_boot=200)
    r = rep.retention
    assert len(r) == 3 * len(RUNS)  # every sparse run, every task
    assert rep.params["keep"] == 0.95 and set(r.keep) == {0.95}
    # a: 19/20 of 20/20 -> 0.95, the CI (n = 20) reaches both sides of 0.95
    a4 = _row(rep, "a", "top", 4)
    assert a4.retention == pytest.approx(0.95) and a4.n == 20
    assert a4.retention_low < 0.95 < a4.retention_high and a4.verdict == "inconclusive"
    lo, hi = newcombe_paired_ci(np.ones(20), np.array(_ones(20, lost=[19]), float))
    assert (a4.retention_low, a4.retention_high) == pytest.approx((1 + lo, 1 + hi))  # baseline 1.0 fixed
    # a: 8/20 of 20/20 -> 0.40, clearly below
    a2 = _row(rep, "a", "top", 2)
    assert a2.retention == pytest.approx(0.40) and a2.retention_high < 0.95 and a2.verdict == "loses"
    # b: 318 of the baseline's 320 (n = 400) -> 0.99375, the CI stays above 0.95
    b4 = _row(rep, "b", "top", 4)
    assert b4.retention == pytest.approx(318 / 320) and b4.n == 400
    assert b4.retention_low >= 0.95 and b4.verdict == "keeps"
    lo, hi = newcombe_paired_ci(np.array(B_BASE, float), np.array(RUNS["core4"][3]["b"], float))
    assert b4.retention_low == pytest.approx(1 + lo / 0.8) and b4.retention_high == pytest.approx(1 + hi / 0.8)
    # b: a random run identical to the baseline -> 1.0
    assert _row(rep, "b", "random", 4, seed=0).retention == pytest.approx(1.0)
    # c: lower is better (err 0.25 vs the baseline's 0.20): inverted, 0.20 / 0.25 = 0.8, with a note
    c4 = _row(rep, "c", "top", 4)
    assert c4.retention == pytest.approx(0.8) and "lower is better" in c4.note
    assert c4.retention_low <= 0.8 <= c4.retention_high
    assert _row(rep, "c", "random", 4, seed=0).retention == pytest.approx(0.2 / 0.4)
    # the threshold moves the verdict: a2's CI is 1 + [-0.78, -0.33] (12 of 20 lost)
    lo, hi = newcombe_paired_ci(np.ones(20), np.array(_ones(20, lost=range(12)), float))
    assert (a2.retention_low, a2.retention_high) == pytest.approx((1 + lo, 1 + hi))
    for keep, want in ((0.7, "loses"), (0.5, "inconclusive"), (0.2, "keeps")):
        assert 1 + lo >= keep if want == "keeps" else 1 + hi < keep if want == "loses" else 1 + lo < keep <= 1 + hi
        assert _row(build_report([runs], n_boot=200, keep=keep), "a", "top", 2).verdict == want


def test_core_vs_random_full_heads_at_each_size(runs):
    rep = build_report([runs], n_boot=200)
    # 4 full heads, task a: CoRe 19/20 paired with each of the two random draws (15/20, 13/20), pooled
    a4 = _row(rep, "a", "top", 4)
    assert a4.n_random_runs == 2
    assert a4.random_score == pytest.approx(28 / 40)
    assert a4["diff"] == pytest.approx(0.95 - 0.70)
    core = np.tile(np.array(_ones(20, lost=[19]), float), 2)
    rand = np.concatenate([_ones(20, lost=range(5)), _ones(20, lost=range(5, 12))]).astype(float)
    assert (a4.diff_low, a4.diff_high) == pytest.approx(newcombe_paired_ci(rand, core))
    assert a4.diff_low > 0 and a4.vs_random == "better"
    # 2 full heads, task a: 8/20 vs 4/20, one draw
    a2 = _row(rep, "a", "top", 2)
    assert a2.n_random_runs == 1 and a2["diff"] == pytest.approx(0.4 - 0.2)
    # task c, lower is better: CoRe err 0.25 vs random 0.40 -> diff -0.15 is CoRe's advantage
    c4 = _row(rep, "c", "top", 4)
    assert c4["diff"] == pytest.approx(0.25 - 0.40)
    assert c4.vs_random in ("better", "inconclusive") and c4.vs_random != "worse"
    # random rows carry no comparison of their own
    assert (rep.retention[rep.retention.rule == "random"].vs_random == "").all()
    # no ablation runs: the ablation verdict stays empty, the sparse one is not mixed into it
    assert rep.verdict.empty


def test_markdown_html_csv_and_cli(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "rep"
    args = parser.parse_args(["report", str(runs), "-o", str(out), "--n-boot", "100", "--keep", "0.9"])
    assert args.fn(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sparse: ")]
    assert len(printed) == 3 * len(RUNS)
    by_task = {x.split(" (")[0][len("sparse: "):]: x for x in printed if "full=top-4" in x}
    assert "KEEPS >= 90% of the baseline: retention 0.994" in by_task["b"]
    assert "INCONCLUSIVE vs 90% of the baseline: retention 0.950" in by_task["a"]  # [0.76, 1.12] holds 0.9
    md = (out / "report.md").read_text()
    head = md[:md.index("##")]
    assert "**Sparse retention**" in head and head.index("**Verdict**") < head.index("**Sparse retention**")
    sparse_md = [line for line in head.splitlines() if line.startswith("- ") and "full heads" in line]
    assert len(sparse_md) == 3 * len(RUNS)
    assert any("LOSES: below 90% of the baseline: retention 0.400" in x for x in sparse_md)
    assert any("CoRe - random full heads: +0.250" in x for x in sparse_md)
    assert "## Retention" in md
    html = (out / "report.html").read_text()
    assert 'id="retention-summary"' in html and 'id="table-retention"' in html
    csv = (out / "retention.csv").read_text()
    assert "keeps" in csv and "loses" in csv
    assert json.loads((out / "report.json").read_text())["params"]["keep"] == 0.9


def test_keep_is_validated(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="cmd"))
    for bad in ("1.5", "0", "-0.2", "nan", "most"):
        with pytest.raises(SystemExit):
            parser.parse_args(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o"), "--keep", bad])
        err = capsys.readouterr().err
        assert "--keep" in err and "(0, 1]" in err, err
    assert parser.parse_args(["report", "r", "-o", "o", "--keep", "1"]).keep == 1.0
    with pytest.raises(ReportError, match=r"keep.*\(0, 1\].*1\.5"):
        build_report([tmp_path / "nowhere"], keep=1.5)  # refused before the runs are read
