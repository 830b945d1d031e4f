"""CLI safety (issue #17 part 5) and the split causal module (part 7)."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest

import core_eval
from core_eval.adapters import shape_from_config
from core_eval.cli import main
from core_eval.loading import LoadError, load_config
from core_eval.spec import load_head_spec, spec_from_scores




def _spec(model_dir, path: Path) -> Path:
    shape = shape_from_config(load_config(model_dir))
    ram = np.random.default_rng(3).random((shape.num_layers, shape.num_heads))
    return spec_from_scores({"ram": ram}, {"name": str(model_dir)}, {"name": "ram-v1"}, shape=shape,
                            k=2).write(path)


# ----------------------------------------------------------------------------- control files

def test_control_file_with_a_reranking_rule_is_refused(weightless, tmp_path):
    """A spec written by `select --rule random` used with heads=top gave the top heads silently."""
    scored = _spec(weightless, tmp_path / "s.json")
    ctrl = tmp_path / "s_random.json"
    assert main(["select", str(scored), "--rule", "random", "--k", "2", "--seed", "1", "--out", str(ctrl)]) == 0
    saved = load_head_spec(ctrl).heads
    with pytest.raises(LoadError, match=r"saved 'random' selection.*heads=top.*Use heads=spec"):
        core_eval.plan(weightless, spec=ctrl, heads="top", k=2)
    from core_eval.integrations.lm_eval import split_args
    from core_eval.options import make_plan

    core, _ = split_args({"pretrained": str(weightless), "head_spec": str(ctrl), "heads": "top"})
    with pytest.raises(LoadError, match="heads=spec"):
        make_plan(str(weightless), core)
    assert core_eval.plan(weightless, spec=ctrl, heads="spec").heads == saved  # the way to use a saved selection
    # the same rule with the same parameters gives the saved heads: not an error
    assert core_eval.plan(weightless, spec=ctrl, heads="random", k=2, seed=1).heads == saved
    # the scored spec itself (a top selection) takes any rule
    assert len(core_eval.plan(weightless, spec=scored, heads="bottom", k=2).heads) == 2


# ----------------------------------------------------------------------------- never overwrite the input

def test_select_needs_out_or_in_place(weightless, tmp_path, capsys):
    scored = _spec(weightless, tmp_path / "s.json")
    before = scored.read_text()
    assert main(["select", str(scored), "--rule", "bottom", "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--in-place" in err
    assert scored.read_text() == before  # untouched
    assert main(["select", str(scored), "--rule", "bottom", "--k", "2", "--out", str(scored)]) == 2
    assert scored.read_text() == before
    assert main(["select", str(scored), "--rule", "bottom", "--k", "2", "--in-place"]) == 0
    assert load_head_spec(scored).rule["rule"] == "bottom"


def test_causal_needs_out_or_in_place_before_loading(weightless, tmp_path, capsys):
    scored = _spec(weightless, tmp_path / "s.json")
    before = scored.read_text()
    rc = main(["causal", "--model", str(weightless), "--spec", str(scored), "--n", "2", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pass --out PATH" in err and "--in-place" in err and "safetensors" not in err  # before the weights
    assert scored.read_text() == before


# ----------------------------------------------------------------------------- one head-list syntax

def test_plot_overlay_heads_take_core_hf_syntax_and_fail_before_weights(weightless, tmp_path, capsys):
    from core_eval.scoring.plots import _parse_heads

    assert _parse_heads("1:0;0:1") == [(1, 0), (0, 1)]  # core_hf's syntax, order kept
    assert _parse_heads("1:0,0:1") == [(1, 0), (0, 1)]  # the former comma form still reads
    rc = main(["plot", "overlay", "--model", str(weightless), "--heads", "9:0;0:1", "-o", str(tmp_path / "o.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "layer 9 is out of range" in err and "safetensors" not in err  # weightless: never reached them
    rc = main(["plot", "overlay", "--model", str(weightless), "--heads", "zero", "-o", str(tmp_path / "o.png")])
    assert rc == 2 and "LAYER:HEAD pairs separated by ';'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sparse window warning

def test_sparse_window_covering_the_prompt_warns_once(tiny_dir):
    import torch

    from core_eval.testing import example_inputs

    d = tiny_dir("llava")
    inputs = example_inputs(d, batch=1)
    T = inputs["input_ids"].shape[1]
    loaded = core_eval.load(d, heads=[(0, 0)], sparse="streaming", window=T + 10, sink=4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with torch.no_grad():
            loaded.model(**inputs)
            loaded.model(**inputs)
    hits = [x for x in w if "change nothing" in str(x.message)]
    assert len(hits) == 1 and f"prompt length ({T} tokens)" in str(hits[0].message)
    small = core_eval.load(d, heads=[(0, 0)], sparse="streaming", window=2, sink=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with torch.no_grad():
            small.model(**inputs)
    assert not [x for x in w if "change nothing" in str(x.message)]


def test_summary_line_names_variant_heads_and_selection():
    from core_eval.intervene import summary_line

    line = summary_line({"variant": {"name": "zero", "kind": "ablation", "options": {}}, "n_heads": 2,
                         "heads_per_layer": {"layer_0": [1], "layer_3": [0]},
                         "selection": {"rule": "top", "k": 2}, "spec": {"path": "s.json", "hash": "ab12"}})
    assert line == "core_eval: zero ablation of 2 heads L0:[1] L3:[0] (selection rule=top, k=2, spec s.json #ab12)"
    assert "\n" not in line


# ----------------------------------------------------------------------------- causal split

def test_causal_is_small_modules_and_run_causal_is_plain_python():
    import core_eval.demo as demo
    from core_eval.scoring import causal

    pkg = Path(causal.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in pkg.glob("*.py")}
    assert {"answers.py", "effects.py", "agreement.py", "run.py", "cli.py"} <= set(sizes)
    assert max(sizes.values()) < 320, sizes
    params = inspect.signature(causal.run_causal).parameters
    assert list(params)[:3] == ["model", "spec", "out"]  # not an argparse namespace
    src = inspect.getsource(demo)
    assert ".parse_args(" not in src and "add_causal_parser" not in src and "import argparse" not in src
    cli_src = (pkg / "cli.py").read_text()
    assert "exact_effects" not in cli_src and "attribution_effects" not in cli_src  # thin: calls run_causal
