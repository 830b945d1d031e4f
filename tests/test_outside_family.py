"""A family defined outside core_eval (``tests/outside_family``: Mistral 3 / Pixtral in one module)
works in every entry point, by dotted path and through an installed distribution's entry point."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core_eval
from core_eval.adapters import UnsupportedArchitectureError, family_source, register_family, registered_families
from core_eval.adapters.regions import sample_region_masks

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

HERE = Path(__file__).resolve().parent
OUTSIDE = HERE / "outside_family"
REF = "core_eval_outside_mistral3:FAMILY"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(OUTSIDE)}
TASKS = HERE.parent / "task_configs"


def run(*args, env=None, check=True, cwd=None):
    cmd = [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=600, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def outside_dir(tmp_path_factory):
    """The outside family's tiny Mistral 3 checkpoint (its recipe, built like the built-ins')."""
    sys.path.insert(0, str(OUTSIDE))
    try:
        import core_eval_outside_mistral3 as mod
    finally:
        sys.path.remove(str(OUTSIDE))
    from core_eval.testing import build_tiny

    register_family(mod.FAMILY, replace=True)  # so build_tiny finds the recipe by name
    return build_tiny("mistral3_outside", tmp_path_factory.mktemp("mistral3"))


def test_without_the_family_the_checkpoint_is_refused_with_the_way_out(outside_dir):
    code = f"import core_eval; core_eval.plan({str(outside_dir)!r})"
    proc = run(sys.executable, "-c", code, env={"PYTHONPATH": ""}, check=False)
    assert proc.returncode != 0
    assert "model_type='mistral3') has no core_eval family" in proc.stderr
    assert "family=pkg.module:obj" in proc.stderr and "core_eval.families" in proc.stderr


def test_load_by_dotted_path_applies_and_maps_regions(outside_dir):
    from transformers import AutoModelForImageTextToText

    from core_eval.testing import example_inputs

    base = core_eval.load(outside_dir, family=REF, heads="none")
    assert base.summary["family"] == "mistral3_outside"
    inputs = example_inputs(outside_dir, batch=2, processor=base.processor)
    plain = AutoModelForImageTextToText.from_pretrained(outside_dir).eval()
    with torch.no_grad():
        want = plain(**inputs).logits
        assert torch.equal(base.model(**inputs).logits, want)  # empty intervention: bit-identical
        ablated = core_eval.load(outside_dir, family=REF, heads=[(0, 0), (1, 3)], ablation="uniform")
        assert not torch.allclose(ablated.model(**inputs).logits, want)
    # the processor carries the family it was loaded for: region masks need no family argument
    from core_eval.probes import Box, ProbeSample
    from core_eval.testing import synthetic_image

    s = ProbeSample(id="x", images=[synthetic_image(0)], question="q", answer="a", boxes=[Box(0, 0, 0, 56, 42)])
    m = sample_region_masks(base.processor, inputs, [s, s])
    n_img = (inputs["input_ids"] == base.model.config.image_token_id).sum(1)
    assert torch.equal(m.visual.sum(1), n_img) and n_img.tolist() == [12, 12]
    assert m.target.sum(1).tolist() == [4, 4]  # the top-left quarter of a 4x3 grid of merged patches


def test_every_cli_takes_an_outside_family(outside_dir, tmp_path):
    spec = tmp_path / "spec.json"
    proc = run(BIN / "core-eval", "score", "--model", outside_dir, "--family", REF, "--probes", "grid_needle",
               "--n", "4", "--batch-size", "2", "--out", spec)
    assert "wrote" in proc.stdout
    written = json.loads(spec.read_text())
    assert written["model"]["architecture"] == "Mistral3ForConditionalGeneration"
    run(BIN / "core-eval", "causal", "--model", outside_dir, "--family", REF, "--spec", spec, "--n", "2",
        "--probes", "grid_needle", "--method", "exact", "--subset", "top2", "--out", tmp_path / "causal.json",
        "--no-progress")
    run(BIN / "core-eval", "plot", "overlay", "--model", outside_dir, "--family", REF, "--spec", spec,
        "--probes", "grid_needle", "--k", "2", "--out", tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 0
    out = tmp_path / "lm_eval"
    run(BIN / "lm_eval", "--model", "core_hf", "--model_args",
        f"pretrained={outside_dir},family={REF},head_spec={spec},heads=top,k=2,ablation=zero",
        "--tasks", "core_grid_needle", "--include_path", TASKS, "--limit", "2", "--apply_chat_template",
        "--output_path", out)
    (res,) = glob.glob(str(out / "*" / "results_*.json"))
    core = json.loads(Path(res).read_text())["config"]["core_eval"]
    assert core["family"] == "mistral3_outside" and core["n_heads"] == 2
    run(sys.executable, "-m", "core_eval.integrations.vlmeval", "--data", "core_grid_needle-n2",
        "--model", "core-m3", "--model-args", f"pretrained={outside_dir},family={REF},heads=0:1,ablation=zero",
        "--work-dir", tmp_path / "vlmeval", env={"LMUData": str(tmp_path / "LMUData")})
    assert glob.glob(str(tmp_path / "vlmeval" / "core-m3__*" / "*" / "*core_grid_needle-n2*"))


def test_entry_point_of_an_installed_distribution(outside_dir, tmp_path):
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "--target", site, OUTSIDE, env={"PYTHONPATH": ""})
    env = {"PYTHONPATH": str(site)}  # the module is importable only as the installed distribution
    listing = run(BIN / "core-eval", "families", env=env).stdout
    (line,) = [ln for ln in listing.splitlines() if ln.startswith("mistral3_outside")]
    assert "entry point core-eval-outside-mistral3: mistral3 = core_eval_outside_mistral3:FAMILY" in line
    spec = tmp_path / "spec.json"
    run(BIN / "core-eval", "score", "--model", outside_dir, "--probes", "grid_needle", "--n", "2",
        "--out", spec, env=env)  # no --family: found by model_type through the entry point
    assert json.loads(spec.read_text())["model"]["architecture"] == "Mistral3ForConditionalGeneration"
    assert "mistral3_outside" not in {n for n, f in registered_families().items() if family_source(f) == "built-in"}


def test_a_broken_entry_point_names_its_distribution(tmp_path, tiny_dir):
    dist = tmp_path / "broken"
    dist.mkdir()
    (dist / "pyproject.toml").write_text(
        (OUTSIDE / "pyproject.toml").read_text().replace("core-eval-outside-mistral3", "core-eval-broken")
        .replace('"core_eval_outside_mistral3.py"', '"core_eval_outside_mistral3.py"'))
    (dist / "core_eval_outside_mistral3.py").write_text("raise ImportError('planted')\n")
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "--target", site, dist, env={"PYTHONPATH": ""})
    proc = run(BIN / "core-eval", "families", env={"PYTHONPATH": str(site)}, check=False)
    assert proc.returncode == 2
    assert "core_eval.families entry point (core-eval-broken: mistral3 = core_eval_outside_mistral3:FAMILY) " \
           "failed to import: ImportError: planted" in proc.stderr
    with pytest.raises(UnsupportedArchitectureError, match="cannot import 'FAMILY' from module 'no_such_module'"):
        core_eval.plan(tiny_dir("llava"), family="no_such_module:FAMILY")  # refused before anything loads
