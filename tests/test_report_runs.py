"""Issue #17, reader side: every results file read, runs told apart by their recorded intervention,
one baseline per (model, harness, task), lm-eval and VLMEvalKit runs joined on the sample key, the
model's real name, ``heads=none`` not shown as ``zero``, spec paths recorded absolute.

Synthetic harness outputs (tests/report_fixtures.py) keep these fast; the real-lm-eval checks are in
tests/test_report.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_eval.report import MismatchError, build_report, load_run
from core_eval.report.cli import add_report_parser
from core_eval.report.readers import READERS, Reader, register_reader
from core_eval.report.run import short_model
from core_eval.report.sample_keys import sample_key
from report_fixtures import summary, synthetic_lm_eval_run

MODEL = "/models/tiny"


def _values(seed: int, n: int = 20, p: float = 0.8) -> list[int]:
    return (np.random.default_rng(seed).random(n) < p).astype(int).tolist()


def _ablated(base: list[int], seed: int, drop: float) -> list[int]:
    rng = np.random.default_rng(seed)
    return [0 if (x and rng.random() < drop) else x for x in base]


def _one_folder(root: Path, model: str = MODEL) -> Path:
    """lm-eval's own layout: the baseline and two masks of one model in one model folder."""
    base = _values(1)
    synthetic_lm_eval_run(root, model=model, values={"t": {"acc": base}}, summary=summary(model, "none", 0),
                          timestamp="2030-01-01T00-00-01.000000")
    synthetic_lm_eval_run(root, model=model, values={"t": {"acc": _ablated(base, 2, 0.5)}},
                          summary=summary(model, "top", 2, k=2), timestamp="2030-01-01T00-00-02.000000")
    synthetic_lm_eval_run(root, model=model, values={"t": {"acc": _ablated(base, 3, 0.1)}},
                          summary=summary(model, "bottom", 2, k=2), timestamp="2030-01-01T00-00-03.000000")
    return root


def test_every_results_file_of_a_folder_is_a_run(tmp_path, capsys):
    root = _one_folder(tmp_path / "runs")
    assert len(list(root.glob("*/results_*.json"))) == 3  # one lm-eval model folder
    rep = build_report([root], n_boot=200)
    assert sorted(rep.comparison.label) == ["zero bottom-2 (2 heads)", "zero top-2 (2 heads)"]
    assert sorted(rep.runs_table.label) == ["baseline", "zero bottom-2 (2 heads)", "zero top-2 (2 heads)"]
    assert not rep.notes.message.str.contains("ignoring").any()
    # the CLI the README shows: `core-eval report runs/ -o report1`, and --all-results still accepted
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="cmd"))
    for extra in ([], ["--all-results"]):
        args = parser.parse_args(["report", str(root), "-o", str(tmp_path / "rep"), "--n-boot", "100", *extra])
        assert args.fn(args) == 0
        runs = pd.read_csv(tmp_path / "rep" / "runs.csv")
        assert len(runs) == 3 and set(runs.rule) == {"baseline", "top", "bottom"}
    assert "verdict: t (acc, zero, 2 heads)" in capsys.readouterr().out
    # one file can still be picked
    (one,) = load_run(f"{next(root.iterdir())}@2030-01-01T00-00-02")
    assert one.label == "zero top-2 (2 heads)"


def test_one_baseline_per_model_harness_and_task(tmp_path):
    a, b = _values(4), _values(5)
    synthetic_lm_eval_run(tmp_path / "base_a", model=MODEL, values={"task_a": {"acc": a}},
                          summary=summary(MODEL, "none", 0))
    synthetic_lm_eval_run(tmp_path / "base_b", model=MODEL, values={"task_b": {"acc": b}},
                          summary=summary(MODEL, "none", 0))
    synthetic_lm_eval_run(tmp_path / "run_a", model=MODEL, values={"task_a": {"acc": _ablated(a, 6, 0.4)}},
                          summary=summary(MODEL, "top", 2, k=2))
    synthetic_lm_eval_run(tmp_path / "run_ab", model=MODEL,
                          values={"task_a": {"acc": _ablated(a, 7, 0.2)}, "task_b": {"acc": _ablated(b, 8, 0.2)}},
                          summary=summary(MODEL, "random", 2, k=2, seed=0))
    rep = build_report([tmp_path], n_boot=200)
    c = rep.comparison.set_index(["label", "task"])
    runs = {Path(r.path).parents[1].name: r.name for r in rep.runs}
    assert c.loc[("zero top-2 (2 heads)", "task_a"), "baseline_run"] == runs["base_a"]
    assert c.loc[("zero random-2 seed=0 (2 heads)", "task_a"), "baseline_run"] == runs["base_a"]
    assert c.loc[("zero random-2 seed=0 (2 heads)", "task_b"), "baseline_run"] == runs["base_b"]
    assert c.loc[("zero random-2 seed=0 (2 heads)", "task_b"), "baseline"] == pytest.approx(np.mean(b))
    # two unmodified runs of one task: refused, naming both and the fix
    synthetic_lm_eval_run(tmp_path / "base_a2", model=MODEL, values={"task_a": {"acc": a}},
                          summary=summary(MODEL, "none", 0))
    with pytest.raises(MismatchError, match=r"several unmodified runs of model /models/tiny \(lm_eval\) ran task "
                                            r"task_a.*--baseline"):
        build_report([tmp_path], n_boot=200)


def _vlmeval_run(root: Path, name: str, dataset: str, preds: list[str], answers: list[str], rec: dict) -> Path:
    d = root / name / "T20260101_Gabc1234"
    d.mkdir(parents=True)
    pd.DataFrame({"index": range(len(preds)), "question": [f"q{i}" for i in range(len(preds))], "answer": answers,
                  "prediction": preds}).to_csv(d / f"{name}_{dataset}.tsv", sep="\t", index=False)
    (d.parent / "core_eval.json").write_text(json.dumps({"core_eval": rec}))
    return d.parent


def test_lm_eval_and_vlmeval_runs_join_on_the_sample_key(tmp_path):
    assert sample_key("core_grid_needle-n8") == "core_grid_needle" == sample_key("core_grid_needle")
    assert sample_key("core_grid_needle-n8-s3") == "core_grid_needle-s3" and sample_key("MMBench") == "MMBench"
    answers = ["red", "blue", "green", "red", "blue", "green", "red", "blue"]
    base = [1, 1, 1, 1, 1, 1, 0, 1]
    synthetic_lm_eval_run(tmp_path / "lm", model=MODEL, values={"core_grid_needle": {"exact_match": base}},
                          summary=summary(MODEL, "none", 0))
    preds = [a if i % 2 == 0 else "none" for i, a in enumerate(answers)]  # right on even doc ids only
    _vlmeval_run(tmp_path / "vlm", "core-top", "core_grid_needle-n8", preds, answers, summary(MODEL, "top", 2, k=2))
    (vr,) = load_run(tmp_path / "vlm")
    assert vr.tasks == ["core_grid_needle"] and vr.task_settings["core_grid_needle"]["harness_task"] == \
        "core_grid_needle-n8"
    rep = build_report([tmp_path / "lm", tmp_path / "vlm"], n_boot=200)
    (row,) = rep.comparison[rep.comparison.metric == "exact_match"].itertuples()
    v = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    assert (row.harness, row.task, row.n) == ("vlmeval", "core_grid_needle", 8)
    assert row.delta == pytest.approx(v.mean() - np.mean(base))
    assert (row.n_lost, row.n_gained) == (int(((np.array(base) == 1) & (v == 0)).sum()), 1)
    assert rep.notes.message.str.contains("baseline from another harness").any()
    assert "core_grid_needle" in rep.leaderboard.columns and "core_grid_needle-n8" not in rep.leaderboard.columns


def test_reader_registry_takes_another_harness(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "marker.txt").write_text("x")
    (base_file,) = (_one_folder(tmp_path / "lm")).glob("*/results_*01.000000.json")
    seen = []

    def read(arg, timestamp=None):
        seen.append(Path(arg))
        (run,) = load_run(base_file)
        run.source = "fake"
        return [run]

    reader = register_reader(Reader("fake", lambda p: (p / "marker.txt").is_file(), read, "a folder with marker.txt"))
    try:
        (run,) = load_run(tmp_path / "other")
        assert run.source == "fake" and seen == [tmp_path / "other"]
        assert load_run(tmp_path / "other", source="fake")[0].source == "fake"
        with pytest.raises(ValueError, match="already registered"):
            register_reader(Reader("fake", reader.detect, read))
    finally:
        READERS.pop("fake")
    with pytest.raises(ValueError, match="source='fake': use one of auto, lm_eval, vlmeval"):
        load_run(tmp_path / "other", source="fake")


def test_model_column_shows_the_real_name(tmp_path):
    assert short_model("core_eval/organism/weights") == "organism"
    assert short_model("/hf/hub/models--llava-hf--llava-1.5-7b-hf/snapshots/0123abcd") == "llava-hf/llava-1.5-7b-hf"
    assert short_model("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    ckpt = tmp_path / "ckpt" / "weights"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"_name_or_path": "org/real-name"}))
    assert short_model(str(ckpt)) == "org/real-name"
    model = str(tmp_path / "organism" / "weights")
    _one_folder(tmp_path / "runs", model=model)
    rep = build_report([tmp_path / "runs"], n_boot=100)
    assert set(rep.leaderboard.model) == {"organism"}
    rep.write(tmp_path / "rep", formats=["md"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| organism |" in md and "| weights |" not in md


def test_heads_none_is_not_shown_as_zero(tmp_path):
    # as older releases recorded heads=none: variant zero with no heads
    old = summary(MODEL, "none", 0)
    assert old["variant"]["name"] == "zero"
    synthetic_lm_eval_run(tmp_path, model=MODEL, values={"t": {"acc": _values(1)}}, summary=old)
    synthetic_lm_eval_run(tmp_path, model=MODEL, values={"t": {"acc": _values(2)}},
                          summary=summary(MODEL, "top", 2, k=2), timestamp="2030-01-02T00-00-00.000000")
    rep = build_report([tmp_path], n_boot=100)
    rt = rep.runs_table.set_index("label")
    assert rt.loc["baseline", "variant"] == "none" and rt.loc["zero top-2 (2 heads)", "variant"] == "zero"


def test_recorded_intervention_names_none_and_absolute_spec_path(tmp_path, monkeypatch):
    from core_eval import load
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.spec import spec_from_scores
    from core_eval.testing import tiny_model_dir

    lm = tiny_model_dir("llama")
    assert load(lm, heads="none").summary["variant"]["name"] == "none"
    assert load(lm, heads="0:0").summary["variant"]["name"] == "zero"
    shape = shape_from_config(load_config(lm))
    ram = np.random.default_rng(0).random((shape.num_layers, shape.num_heads))
    spec_from_scores({"ram": ram}, {"name": str(lm)}, {"name": "ram-v1"}, shape=shape,
                     frac=0.25).write(tmp_path / "spec.json")
    monkeypatch.chdir(tmp_path)
    rec = load(lm, spec="spec.json", heads="top", k=2).summary["spec"]["path"]
    assert rec == str(tmp_path / "spec.json") and Path(rec).is_absolute()
