"""`core_eval.report` on real lm-eval outputs of the plugin (tiny models), checked by hand computations.

The module fixture runs the real ``lm_eval`` console script seven times (two queues in parallel):
a tiny text model on ``core_text_needle_mc`` (multiple choice, ``acc`` varies between masks) with
heads=none / explicit / top / bottom / random, and a tiny LLaVA on ``core_grid_needle`` +
``core_text_needle_mc`` as plain ``hf-multimodal`` and with a ``uniform`` ablation. Statistics
are re-derived from the raw samples files with pandas, numpy and scipy.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from core_eval.adapters import shape_from_config
from core_eval.loading import load_config
from core_eval.report import (
    CorruptFileError,
    EmptyRunError,
    MismatchError,
    MissingBaselineError,
    NothingPairsError,
    ReportError,
    build_report,
    compare,
    load_run,
    mcnemar_exact,
    paired_bootstrap_ci,
    read_speed,
    read_vlmeval,
)
from core_eval.report import writers
from core_eval.report.cli import add_report_parser
from core_eval.spec import spec_from_scores
from core_eval.testing import tiny_model_dir
from report_fixtures import (
    ENV,
    derive_run,
    lm_eval_cmd,
    read_samples,
    results_files,
    run_queues,
    summary,
    synthetic_lm_eval_run,
    vlmeval_workdir,
)

TEXT = "core_text_needle_mc"
GRID = "core_grid_needle"
N_BOOT = 2000


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Seven real lm-eval runs (see the module doc); returns their output folders."""
    root = tmp_path_factory.mktemp("report_runs")
    lm, vlm = tiny_model_dir("llama"), tiny_model_dir("llava")
    shape = shape_from_config(load_config(lm))
    ram = np.random.default_rng(3).random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": str(lm)}, {"name": "ram-v1"}, shape=shape,
                            frac=0.25).write(root / "spec.json")
    vis = f"{GRID},{TEXT}"
    gen = ["--gen_kwargs", "max_gen_toks=4"]
    d = SimpleNamespace(root=root, lm=lm, vlm=vlm, **{k: root / k for k in (
        "base", "masks", "explicit", "random", "vlm_base", "vlm_uniform")})
    run_queues([
        [lm_eval_cmd("core_hf", f"pretrained={lm},heads=none", TEXT, d.base, 8),
         lm_eval_cmd("core_hf", f"pretrained={lm},head_spec={spec},heads=top,k=3", TEXT, d.masks, 8),
         lm_eval_cmd("core_hf", f"pretrained={lm},head_spec={spec},heads=bottom,k=3", TEXT, d.masks, 8),
         lm_eval_cmd("hf-multimodal", f"pretrained={vlm}", vis, d.vlm_base, 4, *gen)],
        [lm_eval_cmd("core_hf", f"pretrained={lm},heads=0:0;0:1;1:2", TEXT, d.explicit, 8),
         lm_eval_cmd("core_hf", f"pretrained={lm},head_spec={spec},heads=random,k=3,seed=0", TEXT, d.random, 8),
         lm_eval_cmd("core_hf", f"pretrained={vlm},heads=0:0;0:1;1:2,ablation=uniform", vis, d.vlm_uniform, 4,
                     *gen)],
    ], cwd=root)
    # core_hf writes each run into <model>__<intervention tag>/: tell the two apart by folder
    (d.top_file,) = [f for f in results_files(d.masks) if "__zero-top3-" in f.parent.name]
    (d.bottom_file,) = [f for f in results_files(d.masks) if "__zero-bottom3-" in f.parent.name]
    return d


def one(folder: Path) -> Path:
    (f,) = results_files(folder)
    return f


def all_lm_runs(real):
    return [real.explicit, real.masks, real.random]


# ----------------------------------------------------------------------------------------- readers


def test_readers_find_runs_and_label_interventions(real):
    (base,) = load_run(real.base)
    assert base.is_baseline and base.label == "baseline" and base.tasks == [TEXT]
    assert base.model == str(real.lm) and base.tasks_with_samples == {TEXT}
    (explicit,) = load_run(real.explicit)
    assert explicit.label == "zero explicit (3 heads)" and explicit.intervention.heads == [(0, 0), (0, 1), (1, 2)]
    assert explicit.intervention.frac_heads == pytest.approx(3 / 12)
    (rnd,) = load_run(real.random)
    assert rnd.label == "zero random-3 seed=0 (3 heads)"
    # core_hf names each run's folder after its intervention: one folder per mask, read in path order
    folders = sorted({r.path.parent.name for r in load_run(real.masks)})
    assert len(folders) == 2 and folders[0].endswith(tuple("0123456789abcdef")) and "__zero-bottom3-" in folders[0]
    assert sorted(r.label for r in load_run(real.masks)) == ["zero bottom-3 (3 heads)", "zero top-3 (3 heads)"]
    assert len(load_run(real.masks, all_results=False)) == 2  # newest file per folder: one each
    ts = real.top_file.name[len("results_"):-len(".json")]
    assert load_run(f"{real.top_file.parent}@{ts[:19]}")[0].label == "zero top-3 (3 heads)"
    assert load_run(real.top_file)[0].label == "zero top-3 (3 heads)"
    (vb,) = load_run(next(real.vlm_base.iterdir()))  # the model subfolder
    assert vb.is_baseline and vb.intervention.harness_model == "hf-multimodal" and vb.tasks == [GRID, TEXT]
    assert vb.model == str(real.vlm)
    # the root of everything: one run per model folder
    assert len(load_run(real.root)) == 7  # every results file: masks/ holds two


# ------------------------------------------------------------------------------ statistics by hand


def hand_pairing(var_file: Path, base_file: Path, task: str, metric: str) -> pd.DataFrame:
    b = read_samples(base_file, task)[["doc_id", "prompt_hash", metric]]
    v = read_samples(var_file, task)[["doc_id", "prompt_hash", metric]]
    return b.merge(v, on=["doc_id", "prompt_hash"], suffixes=("_b", "_v")).sort_values("doc_id")


def numpy_bootstrap(d: np.ndarray, n_boot: int, seed: int, alpha=0.05):
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    return np.quantile(means, [alpha / 2, 1 - alpha / 2])


def hand_newcombe(b: np.ndarray, v: np.ndarray, alpha=0.05):
    """Newcombe (1998) method 10, written out independently with scipy's Wilson intervals."""
    n = len(b)
    t = {(i, j): int(((v == i) & (b == j)).sum()) for i in (0, 1) for j in (0, 1)}
    pv, pb = v.mean(), b.mean()
    lv, uv = sps.binomtest(int(v.sum()), n).proportion_ci(1 - alpha, "wilson")
    lb, ub = sps.binomtest(int(b.sum()), n).proportion_ci(1 - alpha, "wilson")
    den = (t[1, 1] + t[1, 0]) * (t[0, 1] + t[0, 0]) * (t[1, 1] + t[0, 1]) * (t[1, 0] + t[0, 0])
    phi = (t[1, 1] * t[0, 0] - t[1, 0] * t[0, 1]) / math.sqrt(den) if den else 0.0
    d = pv - pb
    return (d - math.sqrt((pv - lv) ** 2 - 2 * phi * (pv - lv) * (ub - pb) + (ub - pb) ** 2),
            d + math.sqrt((uv - pv) ** 2 - 2 * phi * (uv - pv) * (pb - lb) + (pb - lb) ** 2))


def test_comparison_matches_hand_computation_on_real_runs(real):
    rep = build_report([*all_lm_runs(real), real.base], all_results=True, n_boot=N_BOOT, seed=7)
    rows = rep.comparison[(rep.comparison.task == TEXT) & (rep.comparison.metric == "acc")]
    assert sorted(rows.label) == sorted(["zero explicit (3 heads)", "zero top-3 (3 heads)", "zero bottom-3 (3 heads)",
                                         "zero random-3 seed=0 (3 heads)"])
    discordant = 0
    base_file = one(real.base)
    base_json = json.loads(base_file.read_text())
    for row in rows.itertuples():
        var_file = rep.run(row.run).path
        m = hand_pairing(var_file, base_file, TEXT, "acc")
        b, v = m["acc_b"].to_numpy(float), m["acc_v"].to_numpy(float)
        assert row.n == len(m) == 8 and row.n_dropped == 0
        assert row.baseline == pytest.approx(b.mean()) and row.score == pytest.approx(v.mean())
        assert row.delta == pytest.approx(v.mean() - b.mean())
        if b.mean():
            assert row.rel_delta == pytest.approx((v.mean() - b.mean()) / b.mean())
        else:
            assert math.isnan(row.rel_delta)
        assert row.baseline_reported == pytest.approx(base_json["results"][TEXT]["acc,none"])
        assert row.score_reported == pytest.approx(json.loads(var_file.read_text())["results"][TEXT]["acc,none"])
        lost, gained = int(((b == 1) & (v == 0)).sum()), int(((b == 0) & (v == 1)).sum())
        assert (row.n_lost, row.n_gained) == (lost, gained)
        p = sps.binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0
        assert row.p_value == pytest.approx(p, rel=1e-12)
        lo, hi = hand_newcombe(b, v)
        assert (row.ci_low, row.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
        assert row.test == "newcombe+mcnemar"
        assert row.ci_low <= row.delta <= row.ci_high
        discordant += lost + gained
    assert discordant > 0, "the masks should change some answers, or this test checks nothing"


def test_bootstrap_and_mcnemar_against_scipy():
    rng = np.random.default_rng(0)
    b = (rng.random(300) < 0.7).astype(float)
    v = np.where(rng.random(300) < 0.2, 1 - b, b)
    lo, hi = paired_bootstrap_ci(b, v, n_boot=20000, seed=1)
    ref = sps.bootstrap((v - b,), np.mean, n_resamples=20000, method="percentile", random_state=2).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)
    assert lo < (v - b).mean() < hi
    x = rng.normal(size=50)  # continuous values: the CI pins down the exact resamples
    y = x + rng.normal(0.1, 1.0, size=50)
    got = paired_bootstrap_ci(x, y, n_boot=3000, seed=11)
    assert got == pytest.approx(tuple(numpy_bootstrap(y - x, 3000, 11)), abs=1e-12)
    assert got != pytest.approx(tuple(numpy_bootstrap(y - x, 3000, 12)), abs=1e-6)
    for bb, vv in [(b, v), (b[:40], v[:40]), (np.ones(5), np.ones(5)), (np.array([1, 1, 1, 0.]), np.zeros(4))]:
        mc = mcnemar_exact(bb, vv)
        n = mc.n_lost + mc.n_gained
        assert mc.p_value == pytest.approx(sps.binomtest(mc.n_lost, n, 0.5).pvalue if n else 1.0, rel=1e-12)
    assert mcnemar_exact(np.ones(30), np.zeros(30)).p_value == pytest.approx(2 * 0.5 ** 30)
    with pytest.raises(ValueError, match="binary"):
        mcnemar_exact([0.5, 1], [1, 1])


# ------------------------------------------------------------------------------- notes and errors


def test_different_limit_and_changed_prompts_are_reported(real, tmp_path):
    src = one(real.explicit)
    limited = derive_run(src, tmp_path / "lim", keep_docs=range(6), limit=6)
    rep = build_report([limited], [real.base], n_boot=N_BOOT)
    row = rep.comparison[(rep.comparison.task == TEXT) & (rep.comparison.metric == "acc")].iloc[0]
    assert (row.n, row.n_dropped) == (6, 2)
    m = hand_pairing(src, one(real.base), TEXT, "acc").query("doc_id < 6")
    assert row.delta == pytest.approx(m.acc_v.mean() - m.acc_b.mean())
    msgs = " | ".join(rep.notes.message)
    assert "--limit differs: baseline 8.0, run 6.0" in msgs
    assert "compared the 6 samples both runs share; left out 2: 2 only in the baseline" in msgs

    changed = derive_run(src, tmp_path / "prompt", prompt_change_docs=[0, 1])
    rep = build_report([changed], [real.base], n_boot=N_BOOT)
    row = rep.comparison[rep.comparison.metric == "acc"].iloc[0]
    assert (row.n, row.n_dropped) == (6, 4)
    assert rep.notes.message.str.contains("2 docs with the same doc_id but a different prompt hash").any()
    assert (tmp_path / "out").exists() is False
    rep.write(tmp_path / "out")
    assert "different prompt hash" in (tmp_path / "out" / "report.md").read_text()
    assert "different prompt hash" in (tmp_path / "out" / "notes.csv").read_text()

    nothing = derive_run(src, tmp_path / "none", prompt_change_docs=range(8))
    with pytest.raises(NothingPairsError, match=f"task {TEXT}: no sample pairs up.*8 docs with the same doc_id"):
        build_report([nothing], [real.base])


def test_different_task_sets_are_reported_or_refused(real, tmp_path):
    grid_only = derive_run(one(real.vlm_uniform), tmp_path / "g", drop_tasks=[TEXT])
    rep = build_report([grid_only], [real.vlm_base], n_boot=N_BOOT)
    assert set(rep.comparison.task) == {GRID}
    note = rep.notes[rep.notes.task == TEXT]
    assert list(note.message) == ["task only in the baseline: not compared"]
    text_base = derive_run(one(real.vlm_base), tmp_path / "t", drop_tasks=[GRID])
    with pytest.raises(MismatchError, match=rf"share no task: run has \['{GRID}'\], baseline has \['{TEXT}'\]"):
        build_report([grid_only], [text_base])


def test_clear_errors(real, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyRunError, match="empty folder"):
        build_report([tmp_path / "empty"], [real.base])
    with pytest.raises(EmptyRunError, match="no such file"):
        load_run(tmp_path / "missing")
    bad = tmp_path / "bad" / "m"
    bad.mkdir(parents=True)
    (bad / "results_2030-01-01T00-00-00.json").write_text('{\n "results": {},\n "config": {,\n}\n')
    with pytest.raises(CorruptFileError, match=r"results_2030-01-01T00-00-00\.json, line 3: invalid JSON"):
        load_run(tmp_path / "bad")
    broken = shutil.copytree(real.base, tmp_path / "broken")
    (sfile,) = broken.glob(f"*/samples_{TEXT}_*.jsonl")
    lines = sfile.read_text().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + "\n"
    sfile.write_text("".join(lines))
    with pytest.raises(CorruptFileError, match=rf"samples_{TEXT}_.*\.jsonl, line 4: invalid JSON"):
        build_report([real.explicit], [broken])
    with pytest.raises(MissingBaselineError, match=f"no baseline for model {real.lm}"):
        build_report([real.explicit], [real.vlm_base])
    with pytest.raises(MissingBaselineError, match="none of the runs is an unmodified model"):
        build_report([real.explicit, real.random])
    (ex,), (vb,) = load_run(real.explicit), load_run(real.vlm_base)
    with pytest.raises(MismatchError, match="are different models"):
        compare(ex, vb)
    twin = derive_run(one(real.base), tmp_path / "twin")
    with pytest.raises(MismatchError, match="several unmodified runs"):
        build_report([real.explicit, real.base, twin])


# ----------------------------------------------------------------------------------- tables / plots


def test_causal_table_curves_and_leaderboard(real):
    rep = build_report([real.root], all_results=True, n_boot=N_BOOT)
    assert {r.name: rep.baseline_of[r.name] for r in rep.runs if rep.baseline_of[r.name] is None}.keys() == \
        {load_run(real.base)[0].name, load_run(real.vlm_base)[0].name}
    c = rep.causal
    assert list(c.rule) == ["top", "bottom", "random"] and set(c.n_heads) == {3} and set(c.task) == {TEXT}
    comp = rep.comparison.set_index(["run", "task", "metric"])
    for row in c.itertuples():
        ref = comp.loc[(row.run, TEXT, "acc")]
        assert (row.delta, row.p_value, row.ci_low) == (ref.delta, ref.p_value, ref.ci_low)
    assert rep.notes.message.str.contains(r"no layer_matched_random run of that size").any()
    # curves: every rule starts at the baseline's reported score at x = 0
    base_acc = json.loads(one(real.base).read_text())["results"][TEXT]["acc,none"]
    cu = rep.curves[(rep.curves.task == TEXT) & (rep.curves.variant == "zero")]
    assert set(cu.rule) == {"top", "bottom", "random", "explicit"}
    assert (cu[cu.n_heads == 0].score == base_acc).all() and (cu[cu.n_heads == 3].frac_heads == 0.25).all()
    # leaderboard: reported scores, mean over the task every run has, Δ from the comparison
    lb = rep.leaderboard.set_index("run")
    for run in rep.runs:
        data = json.loads(Path(run.path).read_text())["results"]
        for task in (TEXT, GRID):
            metric = "acc" if task == TEXT else "exact_match"
            got = lb.loc[run.name, task]
            assert got == pytest.approx(data[task][f"{metric},none"]) if task in data else math.isnan(got)
        assert lb.loc[run.name, "mean"] == pytest.approx(data[TEXT]["acc,none"]) and lb.loc[run.name, "n_tasks"] == 1
        want = 0.0 if rep.baseline_of[run.name] is None else comp.loc[(run.name, TEXT, "acc")].delta
        assert lb.loc[run.name, f"Δ {TEXT}"] == pytest.approx(want)
        assert lb.loc[run.name, "Δ mean"] == pytest.approx(want)
    assert rep.notes.message.str.contains(f"not in the mean: {GRID}").any()
    assert {"deltas", "causal", "curves"} <= set(rep.figures)


def test_ablation_curves_over_several_sizes(tmp_path):
    model, rng = "/models/tiny", np.random.default_rng(5)
    base = (rng.random(40) < 0.8).astype(int).tolist()
    synthetic_lm_eval_run(tmp_path / "base", model=model, values={"t": {"acc": base}},
                          summary=summary(model, "none", 0))
    runs = []
    for rule, drop in (("top", 0.15), ("random", 0.03), ("layer_matched_random", 0.05)):
        for k in (1, 2, 4):
            vals = [0 if (x and rng.random() < drop * k) else x for x in base]
            runs.append(synthetic_lm_eval_run(tmp_path / f"{rule}{k}", model=model, values={"t": {"acc": vals}},
                                              summary=summary(model, rule, k, k=k)))
    rep = build_report(runs, [tmp_path / "base"], n_boot=500)
    assert len({r.name for r in rep.runs}) == 10  # same model and timestamp everywhere: names made unique
    cu = rep.curves
    assert len(cu) == 3 * 4 and list(cu[cu.rule == "top"].n_heads) == [0, 1, 2, 4]
    assert list(cu[cu.rule == "top"].frac_heads) == [0, 1 / 16, 2 / 16, 4 / 16]
    top4 = cu[(cu.rule == "top") & (cu.n_heads == 4)].iloc[0]
    vals = pd.read_json(next((tmp_path / "top4").glob("*/samples_t_*.jsonl")), lines=True)["acc"]
    assert top4.score == pytest.approx(vals.mean()) and top4.delta == pytest.approx(vals.mean() - np.mean(base))
    assert set(rep.causal.rule) == {"top", "random", "layer_matched_random"}
    assert rep.notes.message.str.contains("no bottom run of that size").any()
    assert "curves" in rep.figures and "causal" in rep.figures


def test_speed_file_formats(real, tmp_path):
    (bottom,) = [r for r in load_run(real.masks) if r.label == "zero bottom-3 (3 heads)"]
    csv = tmp_path / "speed.csv"
    csv.write_text(f"run,speedup,memory_ratio\nzero explicit (3 heads),1.5,0.7\n{bottom.name},1.2,0.9\nnope,2,1\n")
    js = tmp_path / "speed.json"
    js.write_text(json.dumps({"zero explicit (3 heads)": {"speedup": 1.5, "memory_ratio": 0.7},
                              bottom.name: {"speedup": 1.2, "memory_ratio": 0.9}, "nope": 2}))
    tables = []
    for f in (csv, js):
        rep = build_report([real.explicit, real.masks, real.base], speed=f, n_boot=N_BOOT)
        sp = rep.speed.set_index("label")
        assert sp.loc["zero explicit (3 heads)", "speedup"] == 1.5 and sp.loc["baseline", "speedup"] == 1.0
        assert sp.loc["zero bottom-3 (3 heads)", "memory_ratio"] == 0.9
        exp = rep.comparison[(rep.comparison.label == "zero explicit (3 heads)") & (rep.comparison.metric == "acc")]
        assert sp.loc["zero explicit (3 heads)", "delta"] == exp.delta.iloc[0]
        assert rep.notes.message.str.contains("speed entry 'nope' matches no run").any() and "speed" in rep.figures
        tables.append(rep.speed)
    pd.testing.assert_frame_equal(tables[0].drop(columns="memory_ratio"), tables[1].drop(columns="memory_ratio"))
    assert read_speed(js).speedup.tolist() == [1.5, 1.2, 2.0]
    # an entry may name a run by the folder it was read from (lm_eval's --output_path)
    by_folder = tmp_path / "by_folder.json"
    by_folder.write_text(json.dumps({Path(real.explicit).name: 1.7}))
    sp = build_report([real.explicit, real.masks, real.base], speed=by_folder, n_boot=N_BOOT).speed
    assert sp.set_index("label").loc["zero explicit (3 heads)", "speedup"] == 1.7
    bad = tmp_path / "bad.csv"
    bad.write_text("run,speedup\nx,fast\n")
    with pytest.raises(CorruptFileError, match="speedup 'fast' is not a number"):
        read_speed(bad)
    bad.write_text("name,time\nx,1\n")
    with pytest.raises(CorruptFileError, match="needs a 'run'.*'speedup' column"):
        read_speed(bad)


# ------------------------------------------------------------------------------------- VLMEvalKit


@pytest.mark.parametrize("xlsx", [False, True])
def test_vlmeval_reader_on_hand_made_workdir(tmp_path, xlsx):
    root = vlmeval_workdir(tmp_path / "work", xlsx=xlsx)
    runs = read_vlmeval(root)
    assert sorted(r.label for r in runs) == ["baseline", "zero top-12.5% (2 heads)"]
    rep = build_report([root], n_boot=N_BOOT)
    hit = rep.comparison[rep.comparison.metric == "hit"].iloc[0]
    b = np.array([1, 1, 1, 1, 0, 1.0])
    v = np.array([1, 0, 1, 0, 1, 0.0])
    assert (hit.n, hit.baseline, hit.score, hit.n_lost, hit.n_gained) == (6, b.mean(), v.mean(), 3, 1)
    assert hit.p_value == pytest.approx(sps.binomtest(3, 4, 0.5).pvalue)
    overall = rep.comparison[rep.comparison.metric == "Overall"].iloc[0]
    assert overall.delta == pytest.approx(v.mean() - b.mean()) and overall.stats.startswith("aggregate only")
    assert not rep.notes.message.str.contains("per-sample|differs").any()
    record = root / "base_model" / "core_eval.json"
    record.write_text(record.read_text().replace('"max_new_tokens": 16', '"max_new_tokens": 32'))
    notes = build_report([root], n_boot=N_BOOT).notes
    assert list(notes.message[notes.message.str.contains("differs")]) == ["generation settings (--gen_kwargs) differs: baseline {'do_sample': False, "
                                   "'max_new_tokens': 32}, run {'do_sample': False, 'max_new_tokens': 16}"]
    # without judge file and sidecar: exact match computed here, intervention unknown, both noted
    folder = root / "zero_top" / "T20260101_Gabc1234"
    for f in folder.glob("*_result.csv"):
        f.unlink()
    (folder.parent / "core_eval.json").unlink()
    (run,) = read_vlmeval(root / "zero_top")
    assert run.label == "unrecorded intervention" and run.score("CoreProbe_MCQ", "exact_match") == v.mean()
    assert any("exact_match computed by core_eval" in n for n in run.notes)
    assert any("no core_eval.json" in n for n in run.notes)


def _probe_workdir(root: Path) -> Path:
    """Model folder ``m`` with a probe dataset ``core_count`` (no score file) and ``core_count_mc`` (a name
    that extends it, with its own judge file)."""
    d = root / "m" / "T20260101_Gabc1234"
    d.mkdir(parents=True)
    pd.DataFrame({"index": range(4), "question": [f"q{i}" for i in range(4)],
                  "answer": ["3", "red circle", "3", "blue"],
                  "aliases": ['["three"]', "[]", '["three"]', "[]"],
                  "prediction": ["three", "red circle\nmore text", "4", "it is blue"]}).to_csv(
        d / "m_core_count.tsv", sep="\t", index=False)
    mc = pd.DataFrame({"index": range(2), "question": ["q0", "q1"], "A": ["red", "one"], "B": ["blue", "two"],
                       "answer": ["B", "A"], "prediction": ["B. blue", "one"]})
    mc.to_csv(d / "m_core_count_mc.tsv", sep="\t", index=False)
    mc.assign(hit=[0, 1]).to_csv(d / "m_core_count_mc_exact_matching_result.csv", index=False)
    pd.DataFrame({"split": ["none"], "Overall": [0.5]}).to_csv(d / "m_core_count_mc_acc.csv", index=False)
    return d


def test_vlmeval_reader_scores_like_the_probe_tasks(tmp_path):
    """No score file: core_eval.probes.metrics (first line, aliases, number words), never another
    dataset's judge file; with VLMEvalKit's score file: its values, whatever they are."""
    d = _probe_workdir(tmp_path)

    def per_sample(run, task, metric):
        s = run.samples[(run.samples.task == task) & (run.samples.metric == metric)]
        return s.sort_values("doc_id").value.tolist()

    (run,) = read_vlmeval(d.parent)
    assert per_sample(run, "core_count", "exact_match") == [1, 1, 0, 0]  # "three" == "3"; first line only
    assert per_sample(run, "core_count", "relaxed_match") == [1, 1, 0, 1]
    assert run.score("core_count", "relaxed_match") == 0.75
    assert per_sample(run, "core_count_mc", "hit") == [0, 1]  # the judge's file, not the _mc probe's
    assert run.score("core_count_mc", "Overall", "acc.csv") == 0.5
    (note,) = [n for n in run.notes if "m_core_count.tsv" in n]
    assert "exact_match, relaxed_match computed by core_eval.probes.metrics" in note
    (d / "m_core_count_mc_exact_matching_result.csv").unlink()  # MCQ fallback: letter, option text or both
    (run,) = read_vlmeval(d.parent)
    assert per_sample(run, "core_count_mc", "exact_match") == [1, 1] and "hit" not in set(run.samples.metric)
    # the dataset's own per-sample file wins over any recomputation; its _acc.csv must agree
    pd.DataFrame({"index": range(4), "exact_match": [0, 0, 1, 1], "relaxed_match": [0, 1, 1, 1]}).to_excel(
        d / "m_core_count_score.xlsx", index=False, engine="openpyxl")
    pd.DataFrame({"split": ["none"], "n": [4], "exact_match": [0.5], "relaxed_match": [0.5]}).to_csv(
        d / "m_core_count_acc.csv", index=False)
    (run,) = read_vlmeval(d.parent)
    assert per_sample(run, "core_count", "exact_match") == [0, 0, 1, 1]
    assert per_sample(run, "core_count", "relaxed_match") == [0, 1, 1, 1]
    assert not any("m_core_count.tsv" in n for n in run.notes)
    assert set(run.metrics[run.metrics.task == "core_count"].metric) == {"exact_match", "relaxed_match"}
    (note,) = [n for n in run.notes if "m_core_count_acc.csv" in n]
    assert note == ("m_core_count_acc.csv: relaxed_match = 0.5, but the per-sample scores average 0.75; "
                    "the per-sample mean is used")


def test_vlmeval_reader_errors_name_the_file_and_the_fix(tmp_path):
    def fresh(name):
        root = vlmeval_workdir(tmp_path / name, xlsx=True)
        return root, root / "zero_top" / "T20260101_Gabc1234"

    root, d = fresh("unreadable")
    (d / "zero_top_CoreProbe_MCQ.xlsx").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptFileError, match=r"zero_top_CoreProbe_MCQ\.xlsx: cannot read this \.xlsx table "
                                               r"\(BadZipFile.*rerun VLMEvalKit for this model and dataset"):
        read_vlmeval(root)
    root, d = fresh("bad_score")
    (d / "zero_top_CoreProbe_MCQ_exact_matching_result.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFileError, match=r"zero_top_CoreProbe_MCQ_exact_matching_result\.csv: cannot read"):
        read_vlmeval(root)
    for col in ("index", "prediction"):
        root, d = fresh(f"no_{col}")
        f = d / "zero_top_CoreProbe_MCQ.xlsx"
        pd.read_excel(f).drop(columns=col).to_excel(f, index=False, engine="openpyxl")
        with pytest.raises(CorruptFileError, match=rf"zero_top_CoreProbe_MCQ\.xlsx: prediction file lacks "
                                                   rf"column\(s\) \['{col}'\].*Rerun the model's inference"):
            read_vlmeval(root)
    for text, problem in [('{"core_eval": {"n_heads": 2,', r", line 1: invalid JSON: .*"),
                          ("[1, 2]", r": expected a JSON object .*got list"),
                          ('{"name": "zero_top"}', r": no 'core_eval' intervention summary .*in this record")]:
        root, d = fresh(f"record{len(text)}")
        (d.parent / "core_eval.json").write_text(text)
        with pytest.raises(CorruptFileError, match=rf"zero_top/core_eval\.json{problem}; core-vlmeval writes it "
                                                   r"when it loads the model: rerun that model, or delete the file"):
            read_vlmeval(root)


# ----------------------------------------------------------------------------------------- writers


def test_writes_are_complete_or_untouched(real, tmp_path, monkeypatch):
    rep = build_report([real.explicit, real.base], n_boot=N_BOOT)
    out = rep.write(tmp_path / "rep")
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "report.json", "comparison.csv", "leaderboard.csv", "causal.csv",
            "curves.csv", "runs.csv", "notes.csv", "plots"} <= names
    back = pd.read_csv(out / "comparison.csv")
    assert back.delta.tolist() == pytest.approx(rep.comparison.delta.tolist())
    assert "zero explicit (3 heads)" in (out / "report.md").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(writers, "render_html", lambda r: 1 / 0)  # fails while rendering
    with pytest.raises(ZeroDivisionError):
        rep.write(out)
    monkeypatch.undo()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writers.os, "chmod", boom)  # fails after the files were written to the temp folder
    with pytest.raises(OSError, match="disk full"):
        rep.write(out)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temp folders left behind
    rep.write(out, formats=["csv"])  # an earlier report is replaced as a whole (atomic exchange)
    assert not (out / "report.html").exists() and (out / "comparison.csv").exists()
    monkeypatch.setattr(writers, "_exchange", lambda a, b: False)  # no renameat2: two renames
    rep.write(out, formats=["md"])
    assert (out / "report.md").exists() and not (out / "comparison.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ReportError, match="not a core-eval report folder"):
        rep.write(other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_cli(real, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "cli"
    args = parser.parse_args(["report", str(real.explicit), "--baseline", str(real.base), "-o", str(out),
                              "--n-boot", "300", "--metric", f"{TEXT}=acc_norm", "--title", "CLI test"])
    assert args.fn(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["params"]["n_boot"] == 300 and manifest["title"] == "CLI test"
    assert manifest["params"]["primary_metrics"] == {TEXT: "acc_norm (none)"}
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "core_eval.report.cli", str(tmp_path / "empty"), "-o",
                        str(tmp_path / "x")], capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and "core-eval report: error:" in p.stderr and "empty folder" in p.stderr
    assert not (tmp_path / "x").exists()
    from core_eval.report.cli import SOURCES
    from core_eval.report.readers import SOURCES as reader_sources
    assert SOURCES == reader_sources


# --------------------------------------------------------------------------------- headless browser


def _browser():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.fail("headless Chromium is needed for the HTML test: apt-get install -y chromium chromium-driver "
                    "(and pip install selenium)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is needed for the HTML test: pip install selenium")
    return chrome, driver, webdriver, Service


def test_html_renders_in_headless_chromium(real, tmp_path):
    chrome, driver_path, webdriver, Service = _browser()
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"zero explicit (3 heads)": 1.4, "zero random-3 seed=0 (3 heads)": 1.1}))
    rep = build_report([real.root], all_results=True, speed=speed, n_boot=N_BOOT, title="<CoRe> & report")
    assert {"deltas", "causal", "curves", "speed"} <= set(rep.figures)
    out = rep.write(tmp_path / "html")
    page = (out / "report.html").read_text()
    assert page.count("<script") == 1 and "<script src" not in page  # one inline script: table sorting
    assert 'src="http' not in page and "href=\"http" not in page
    assert "&lt;CoRe&gt; &amp; report" in page
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        drv.get((out / "report.html").as_uri())
        imgs = drv.execute_script("return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth]);")
        assert sorted(i[0] for i in imgs) == sorted(f"fig-{n}" for n in rep.figures)
        assert all(complete and width > 0 for _, complete, width in imgs), imgs
        n_rows = drv.execute_script("return document.querySelectorAll('#table-comparison tbody tr').length;")
        assert n_rows == len(rep.comparison)
        # sortable tables: a click on a header sorts by that column, a second click reverses
        col = list(writers.SHOWN["comparison"]).index("delta")
        read = (f"return Array.from(document.querySelectorAll('#table-comparison tbody tr'))"
                f".map(r => r.cells[{col}].getAttribute('data-v'));")
        drv.execute_script(f"document.querySelectorAll('#table-comparison thead th')[{col}].click();")
        asc = [float(x) for x in drv.execute_script(read) if x is not None]
        assert len(asc) == rep.comparison.delta.notna().sum() and asc == sorted(asc) and asc != asc[::-1]
        drv.execute_script(f"document.querySelectorAll('#table-comparison thead th')[{col}].click();")
        desc = [float(x) for x in drv.execute_script(read) if x is not None]
        assert desc == sorted(asc, reverse=True)
        assert drv.execute_script("return document.querySelector('h2').textContent;") == "Verdict"
        severe = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        drv.quit()
