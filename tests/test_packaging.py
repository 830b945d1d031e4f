"""A normal (non-editable) wheel install makes `lm_eval --model core_hf` work with no extra step.

The editable install is what the rest of the suite runs against; this test builds the wheel,
installs it into a fresh virtual environment (dependencies borrowed from the test venv through a
plain path entry, so none of the test venv's own .pth hooks run) and runs lm-eval there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(out), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    (whl,) = out.glob("core_eval-*.whl")
    return whl


def test_wheel_ships_hook_tasks_and_entry_point(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "core_eval_lm_eval_hook.pth" in names  # at site-packages' root
    for f in ("core_grid_needle.yaml", "core_probes.yaml", "utils.py", "_probe_template_yaml"):
        assert f"core_eval/task_configs/{f}" in names
    for f in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json"):
        assert f"core_eval/organism/weights/{f}" in names  # the bundled organism ships in the wheel
    assert "core_eval/head_masks/organism.json" in names
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[lm_eval.models]" in text and "core_hf = core_eval.integrations.lm_eval:CoreHFLM" in text


def test_wheel_install_registers_core_hf_and_finds_its_tasks(wheel, tmp_path, tiny_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --target (not --prefix: that would uninstall the editable install of the running environment)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    py = str(venv / "bin" / "python")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    tasks = subprocess.run([py, "-m", "core_eval.cli", "tasks-path"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, check=True).stdout.strip()
    assert tasks.startswith(str(site)) and tasks.endswith("core_eval/task_configs")
    out = tmp_path / "out"
    proc = subprocess.run([py, "-m", "lm_eval", "--model", "core_hf", "--model_args",
                           f"pretrained={tiny_dir('llava')},heads=1:0", "--tasks", "core_grid_needle",
                           "--include_path", tasks, "--limit", "2", "--output_path", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = out.glob("*/results_*.json")
    core = json.loads(res.read_text())["config"]["core_eval"]
    assert core["n_heads"] == 1
    import_check = subprocess.run([py, "-c", "import core_eval; print(core_eval.__file__)"], capture_output=True,
                                  text=True, env=env, cwd=tmp_path, check=True).stdout
    assert import_check.startswith(str(site))  # the wheel's copy, not the checkout
