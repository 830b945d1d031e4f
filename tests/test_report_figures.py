"""Issue #17, figures and spec sections: >= 800 px wide, >= 10 pt text, labels not cut, one colour per rule
whatever the run order; `core-eval report --spec` shows the heatmap, heads table and RAM vs causal."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core_eval.report import build_report, plots
from core_eval.report.cli import add_report_parser
from core_eval.adapters.base import ModelShape
from core_eval.spec import spec_from_scores
from report_fixtures import summary, synthetic_lm_eval_run

MODEL = "/models/tiny"


def _texts(fig):
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontsize"))
            if t.get_text().strip()]


def _runs(root, order):
    rng = np.random.default_rng(0)
    base = (rng.random(30) < 0.8).astype(int).tolist()
    synthetic_lm_eval_run(root / "base", model=MODEL, values={"t": {"acc": base}}, summary=summary(MODEL, "none", 0))
    for i, (rule, k) in enumerate(order):
        vals = [0 if (x and rng.random() < 0.1 * k) else x for x in base]
        s = summary(MODEL, rule, k, frac=k / 16)
        if rule == "text_only":
            s = summary(MODEL, "top", k, variant="text_only", kind="sparse", frac=0.1)
            s["variant"]["options"] = {"sink": 4, "window": 16}
        synthetic_lm_eval_run(root / f"r{i}", model=MODEL, values={"t": {"acc": vals}}, summary=s)
    return build_report([root], n_boot=100)


def test_figures_are_readable_and_colours_follow_the_rule(tmp_path):
    order = [("top", 1), ("random", 1), ("bottom", 1), ("top", 2), ("random", 2), ("text_only", 2)]
    rep = _runs(tmp_path / "a", order)
    for name in ("deltas", "causal", "curves"):
        w, h = Image.open(io.BytesIO(rep.figures[name])).size
        assert w >= 800, (name, w)
    figs = {"deltas": plots.deltas_figure(plots_rows(rep)), "curves": plots.curves_figure(rep.curves),
            "causal": plots.causal_figure(rep.causal)}
    for name, fig in figs.items():
        small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < 10]
        assert not small, (name, small)
    labels = [t.get_text().replace("\n", " ") for t in _texts(figs["deltas"])]
    assert any("full=top-10%" in x for x in labels), labels  # not cut to "full=top-1"

    def colours(report):
        fig = plots.curves_figure(report.curves)
        return {ln.get_label(): ln.get_color() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}

    other = _runs(tmp_path / "b", list(reversed(order)))
    assert colours(rep) == colours(other)
    assert colours(rep)["top (zero)"] == plots.RULE_COLOURS["top"]
    assert colours(rep)["random (zero)"] == plots.RULE_COLOURS["random"]


def plots_rows(rep):
    from core_eval.report.tables import _primary_rows

    return _primary_rows(rep.comparison, rep.primary)


def _spec(path, causal: bool):
    rng = np.random.default_rng(1)
    shape = ModelShape(num_layers=3, num_heads=4, num_kv_heads=4, head_dim=8)
    scores = {"ram": rng.random((3, 4)) * 0.5, "lift": rng.random((3, 4)) * 3}
    if causal:
        scores["causal_logprob_drop"] = rng.normal(size=(3, 4))
    return spec_from_scores(scores, {"name": "/ckpt/organism/weights"}, {"name": "ram-v1"}, shape=shape,
                            frac=0.25).write(path)


def test_report_spec_sections(tmp_path):
    spec = _spec(tmp_path / "spec.json", causal=True)
    plain = _spec(tmp_path / "plain.json", causal=False)
    rep = _runs(tmp_path / "runs", [("top", 1), ("random", 1)])
    from core_eval.report.spec_sections import add_spec_sections

    add_spec_sections(rep, [spec])
    heads = rep.sections["heads"]
    ram = np.asarray(json.loads(spec.read_text())["scores"]["ram"])
    assert len(heads) == 12 and heads.ram.iloc[0] == ram.max() and heads.selected.sum() == 3
    assert heads.set_index(["layer", "head"]).loc[(0, 1), "ram"] == ram[0, 1]
    assert "heads" in rep.figures and "ram_vs_causal" in rep.figures
    assert Image.open(io.BytesIO(rep.figures["heads"])).size[0] >= 800
    # the CLI: --spec, repeatable; a spec without causal effects has no RAM-vs-causal section
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "rep"
    args = parser.parse_args(["report", str(tmp_path / "runs"), "-o", str(out), "--n-boot", "50",
                              "--spec", str(spec), "--spec", str(plain)])
    assert args.fn(args) == 0
    names = {p.name for p in out.iterdir()}
    assert {"heads-spec.csv", "heads-plain.csv", "ram_vs_causal-spec.csv"} <= names
    assert "ram_vs_causal-plain.csv" not in names
    html = (out / "report.html").read_text()
    assert 'id="fig-heads-spec"' in html and 'id="fig-ram_vs_causal-spec"' in html
    args = parser.parse_args(["report", str(tmp_path / "runs"), "-o", str(out), "--spec", str(tmp_path / "nope.json")])
    with pytest.raises(ValueError, match="nope.json: no such file"):
        args.fn(args)
