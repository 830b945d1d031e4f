"""`lm_eval --model core_hf` through the real console script, against the installed package."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import accelerate_launch

import core_eval
from core_eval.adapters import shape_from_config
from core_eval.loading import load_config
from core_eval.spec import spec_from_scores

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "task_configs"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


def lm_eval(*args, cwd=None, check=True, launcher=None, env=None):
    cmd = (launcher or [str(BIN / "lm_eval")]) + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(env or {})}, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def results(out: Path):
    (path,) = glob.glob(str(out / "*" / "results_*.json"))
    return json.loads(Path(path).read_text())


def samples(out: Path, task: str) -> dict[int, dict]:
    (path,) = glob.glob(str(out / "*" / f"samples_{task}_*.jsonl"))
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return {r["doc_id"]: r for r in rows}


def make_spec(model_dir: Path, path: Path) -> Path:
    shape = shape_from_config(load_config(model_dir))
    ram = np.random.default_rng(1).random((shape.num_layers, shape.num_heads))
    return spec_from_scores({"ram": ram}, {"name": str(model_dir)}, {"name": "ram-v1", "note": "random test scores"},
                            shape=shape, frac=0.25).write(path)


# the core_hf model args the README documents
README_CORE_ARGS = ("head_spec", "heads", "frac", "k", "threshold", "seed", "ablation", "means", "sparse", "sink",
                    "window", "kv_policy")
COMMON = ["--include_path", TASKS, "--batch_size", 2, "--apply_chat_template", "--log_samples"]


@pytest.mark.parametrize("family,task", [("llava", "core_grid_needle"), ("qwen2_vl", "core_multi_image_needle"),
                                         ("llama", "core_text_needle")])
def test_core_hf_runs_probe_tasks_with_a_head_spec(tmp_path, tiny_dir, family, task):
    d = tiny_dir(family)
    spec = make_spec(d, tmp_path / "spec.json")
    out = tmp_path / "out"
    lm_eval("--model", "core_hf", "--model_args", f"pretrained={d},head_spec={spec},heads=top,frac=0.25",
            "--tasks", task, "--limit", 3, "--output_path", out, *COMMON)
    r = results(out)
    core = r["config"]["core_eval"]
    assert core["variant"]["name"] == "zero" and core["selection"]["rule"] == "top"
    assert core["n_heads"] == 3 and core["spec"]["hash"] and core["spec"]["path"] == str(spec)
    assert core["family"] == ("text" if family == "llama" else family)
    assert core["core_eval_version"] == core_eval.__version__ and core_eval.__version__
    assert "exact_match,none" in r["results"][task]
    assert len(samples(out, task)) == 3


def test_builtin_models_still_resolve_next_to_core_hf():
    code = ("from lm_eval.api.registry import get_model\n"
            "print(get_model('hf').__name__, get_model('hf-multimodal').__name__, get_model('core_hf').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.split() == ["HFLM", "HFMultimodalLM", "CoreHFLM"]


def test_heads_none_equals_hf_multimodal_and_ablation_differs(tmp_path, tiny_dir):
    d = tiny_dir("llava")
    task = "core_grid_needle"
    runs = {
        "hf": ("hf-multimodal", f"pretrained={d}"),
        "none": ("core_hf", f"pretrained={d},heads=none"),
        "ablated": ("core_hf", f"pretrained={d},heads=0:0;0:1;0:2;0:3;1:0;1:1;1:2;1:3,ablation=zero"),
    }
    got = {}
    for name, (model, args) in runs.items():
        out = tmp_path / name
        lm_eval("--model", model, "--model_args", args, "--tasks", task, "--limit", 4, "--output_path", out,
                "--gen_kwargs", "max_gen_toks=8", *COMMON)
        got[name] = {i: s["resps"] for i, s in samples(out, task).items()}
    assert got["none"] == got["hf"]
    assert got["ablated"] != got["hf"]




@pytest.mark.parametrize("args,needle", [
    ("head_sepc=x.json", "unknown model_args ['head_sepc']"),
    ("heads=top", "needs a head spec"),
    ("heads=1:0,ablation=zeroo", "unknown mask variant 'zeroo'"),
    ("heads=9:0", "layer 9 is out of range"),
    ("heads=1:0,frac=lots", "frac='lots' is not a valid float"),
])
def test_bad_model_args_fail_before_weights_load(weightless, args, needle):
    proc = lm_eval("--model", "core_hf", "--model_args", f"pretrained={weightless},{args}",
                   "--tasks", "core_grid_needle", "--include_path", TASKS, "--limit", 1, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Loading weights" not in proc.stderr and "model.safetensors" not in proc.stderr  # never reached them
    if "unknown model_args" in needle:  # the error lists the valid names: ours (README) and lm-eval's
        valid = proc.stderr[proc.stderr.index("unknown model_args"):]
        for name in README_CORE_ARGS + ("pretrained", "batch_size", "dtype", "max_length", "device_map"):
            assert f"{name} (" in valid or f" {name}," in valid or f" {name}." in valid, name


def test_hub_tasks_without_their_data_fail_before_weights_load(weightless, tmp_path):
    """lm-eval builds the model before its tasks: core_hf checks their datasets first (empty cache,
    offline). A group expands to its subtasks; the local probe task is not named."""
    proc = lm_eval("--model", "core_hf", "--model_args", f"pretrained={weightless},heads=1:0",
                   "--tasks", "chartqa,mmmu_val,core_grid_needle", "--include_path", TASKS, "--limit", 1,
                   check=False, env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode != 0
    err = proc.stderr[proc.stderr.index("TaskDataError"):]
    assert "HuggingFaceM4/ChartQA (task chartqa)" in err and "MMMU/MMMU (task mmmu_val_accounting" in err, err
    assert "30 more" not in err and "26 more" in err and "core_grid_needle" not in err and "HF_HUB_OFFLINE" in err
    assert "Loading weights" not in proc.stderr and "model.safetensors" not in proc.stderr


def test_valid_args_on_weightless_checkpoint_do_reach_loading(weightless):
    """Control for the test above: with valid args the same folder fails at weight loading."""
    proc = lm_eval("--model", "core_hf", "--model_args", f"pretrained={weightless},heads=1:0",
                   "--tasks", "core_grid_needle", "--include_path", TASKS, "--limit", 1, check=False)
    assert proc.returncode != 0 and "unknown model_args" not in proc.stderr


def test_accelerate_data_parallel_two_cpu_processes(tmp_path, tiny_dir):
    d = tiny_dir("llava")
    out = tmp_path / "out"
    # `accelerate launch --cpu` starts one process; torchrun-style launch + ACCELERATE_USE_CPU gives 2 (README)
    launcher = accelerate_launch("-m", "lm_eval")
    proc = lm_eval("--model", "core_hf", "--model_args", f"pretrained={d},heads=1:0;2:1,ablation=uniform",
                   "--tasks", "core_grid_needle", "--limit", 4, "--output_path", out, *COMMON, launcher=launcher,
                   env={"ACCELERATE_USE_CPU": "true"})
    assert "on rank 1" in proc.stderr and "on rank 0" in proc.stderr  # the data really was split
    r = results(out)
    assert r["config"]["core_eval"]["variant"]["name"] == "uniform"
    assert sorted(samples(out, "core_grid_needle")) == [0, 1, 2, 3]


def test_runs_of_one_model_land_in_folders_named_after_their_intervention(tmp_path, tiny_dir):
    from core_eval.report import load_run

    d = tiny_dir("llava")
    out = tmp_path / "runs"
    for heads in ("none", "0:1"):
        lm_eval("--model", "core_hf", "--model_args", f"pretrained={d},heads={heads}", "--tasks", "core_grid_needle",
                "--limit", 2, "--output_path", out, *COMMON)
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 2 and folders[0].endswith("__baseline") and "__zero-explicit1-s0-" in folders[1]
    assert all(len(list((out / f).glob("results_*.json"))) == 1 == len(list((out / f).glob("samples_*")))
               for f in folders)
    runs = load_run(out)
    assert sorted(r.intervention.summary["n_heads"] for r in runs) == [0, 1]
