"""`core-eval demo` end to end at reduced size, and its rerun reusing the finished steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from core_eval.demo import DemoConfig, run_demo

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

REPO = Path(__file__).resolve().parents[1]


def _model_dir(tiny_dir):
    from core_eval.organism import organism_dir

    try:
        return organism_dir()
    except FileNotFoundError:  # checkout without the trained weights: the plumbing on a random model
        return tiny_dir("llava")


def _readme_demo_command() -> str:
    """The README's main job (`bash .ci/setup && .venv/bin/core-eval demo`) without the set-up CI ran."""
    text = (REPO / "README.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("bash .ci/setup && ") and " demo" in ln]
    return line.removeprefix("bash .ci/setup && ")


def test_demo_runs_end_to_end_and_resumes(tmp_path, tiny_dir):
    """The README's demo command (``--small``), then a rerun in Python that reuses every step."""
    out = tmp_path / "demo"
    cmd = _readme_demo_command().replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    cmd += f" --small --out {out} --model {_model_dir(tiny_dir)}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out / "report"
    assert "demo finished" in proc.stdout and str(report / "report.md") in proc.stdout
    for f in ("report.html", "report.md", "causal.csv", "heads.csv", "ram_vs_causal.csv", "speed.csv"):
        assert (report / f).is_file(), f
    causal = pd.read_csv(report / "causal.csv")
    assert {"top", "bottom", "random", "layer_matched_random"} <= set(causal["rule"])
    k = int(causal.loc[causal["rule"] == "bottom", "n_heads"].iloc[0])  # the 5% size
    at_k = causal[causal["n_heads"] == k]
    assert sorted(at_k["rule"]) == sorted(["top", "bottom", "random", "layer_matched_random"])  # equal sizes
    heads = pd.read_csv(report / "heads.csv")
    assert {"ram", "lift", "causal_logprob_drop", "attribution_logprob_drop"} <= set(heads.columns)
    # the report states what was measured: its scores are the lm-eval results of each run
    runs = out / "runs"

    def em(run):
        res = json.loads(next((runs / run).glob("*/results_*.json")).read_text())
        return res["results"]["core_grid_needle"]["exact_match,none"]

    base = em("baseline")
    for rule in ("top", "bottom", "random", "layer_matched_random"):
        row = at_k[at_k["rule"] == rule].iloc[0]
        assert row["score"] == em(f"zero-{rule}") and row["baseline"] == base, rule
        assert abs(row["delta"] - (em(f"zero-{rule}") - base)) < 1e-12
    curves = pd.read_csv(report / "curves.csv")
    for rule in ("top", "random"):  # one line per rule: the baseline, k=1 and the 5% set
        line = curves[curves["rule"] == rule].sort_values("n_heads")
        assert list(line["n_heads"]) == [0, 1, k], line
        assert list(line["score"]) == [base, em(f"zero-{rule}-k1"), em(f"zero-{rule}")]
    speed_csv = pd.read_csv(report / "speed.csv")
    md = (report / "report.md").read_text()
    assert "Spearman(RAM, single-head log-prob drop)" in md and "text_only" in md
    speed = json.loads((out / "speed.json").read_text())
    assert set(speed) == {"sparse-core-10", "sparse-random-10"} and all(v > 0 for v in speed.values())
    # the report's accuracy-vs-speed rows carry the measured speedups (baseline = 1)
    assert sorted(speed_csv["speedup"]) == sorted([1.0, *speed.values()]), speed_csv
    for name, v in speed.items():
        rule = "top" if name.startswith("sparse-core") else "random"
        rows = speed_csv[speed_csv["label"].str.contains(f"full={rule}")]
        assert len(rows) == 1 and rows["speedup"].iloc[0] == v, (name, speed_csv[["label", "speedup"]])
    # a rerun reuses every finished step (no scoring, no lm-eval run): seconds, not minutes
    stamp = {p: p.stat().st_mtime for p in (out / "runs").glob("*/*/results_*.json")}
    t = time.perf_counter()
    run_demo(out, model_dir=_model_dir(tiny_dir), config=DemoConfig.small())
    assert time.perf_counter() - t < 60
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*/*/results_*.json")} == stamp
