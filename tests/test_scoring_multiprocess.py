"""`core-eval score` under `accelerate launch` with 2 CPU processes: the batches are shared and the
spec equals a single-process run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import accelerate_launch

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

BIN = Path(sys.executable).parent
ARGS = ["score", "--n", "8", "--batch-size", "2", "--knobs", '{"grid": 3, "image_size": 96}']


def test_two_processes_share_the_batches(tmp_path, tiny_dir):
    model = str(tiny_dir("llava"))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = accelerate_launch("-m", "core_eval.cli")
    proc = subprocess.run(launch + ARGS + ["--model", model, "--out", str(tmp_path / "mp.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each process scored 2 of the 4 batches (two progress bars would be 4/4 in one process)
    assert proc.stderr.count("2/2") >= 1 and "4/4" not in proc.stderr
    single = subprocess.run([str(BIN / "core-eval"), *ARGS, "--model", model, "--out", str(tmp_path / "one.json")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("mp.json", "one.json"))
    np.testing.assert_allclose(np.array(a["scores"]["ram"]), np.array(b["scores"]["ram"]), atol=1e-6)
    assert a["scorer"]["n_used"] == 8 and not (tmp_path / "mp.json.partial").exists()
