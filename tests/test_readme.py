"""The README's workflow (score -> select -> lm_eval -> report) runs as written, offline, at tiny sizes.

The block under "Score heads, then evaluate without them" is read from README.md itself; only the
checkpoint (a tiny LLaVA), ``--n`` and the number of evaluated samples (``--limit``) change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECTION = "## Score heads, then evaluate without them"


def block_commands(after: str, *, nth: int = 0) -> list[str]:
    """The shell commands of the ``nth`` bash block after the README line ``after``, continuation lines
    joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text[text.index(after):], flags=re.S)
    joined = re.sub(r"\\\n\s*", " ", blocks[nth])
    return [line.split("  #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def workflow_commands() -> list[str]:
    return block_commands(SECTION)


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _run(cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_readme_workflow_block_is_complete():
    cmds = workflow_commands()
    tools = [c.split()[0] + (" " + c.split()[1] if c.startswith("core-eval") else "") for c in cmds]
    assert tools[:2] == ["core-eval score", "core-eval select"] and tools[-1] == "core-eval report"
    lm = [c for c in cmds if c.startswith("lm_eval")]
    assert any("heads=none" in c for c in lm) and any("heads=top" in c and "ablation=" in c for c in lm)
    assert any("heads=spec" in c for c in lm)  # the saved control selection
    assert not any("chartqa" in c for c in cmds)  # Hub-only tasks fail offline: not in the runnable block


def test_the_readme_workflow_runs_as_written_and_reports_every_run(tmp_path, tiny_dir):
    model = tiny_dir("llava")
    (tmp_path / "head_masks").mkdir()
    env = _env()
    cmds = workflow_commands()
    for cmd in cmds:
        cmd = cmd.replace("path/to/checkpoint", str(model)).replace("--n 256", "--n 12")
        if cmd.startswith("lm_eval"):
            cmd += " --limit 6"
        proc = _run(cmd, tmp_path, env)
        if "window=256" in cmd:
            assert "window" in proc.stderr and "prompt" in proc.stderr  # the window covers the whole prompt
    report = tmp_path / "report1"
    md = (report / "report.md").read_text()
    manifest = json.loads((report / "report.json").read_text())
    n_lm_eval = sum(c.startswith("lm_eval") for c in cmds)
    assert len(manifest["runs"]) == n_lm_eval  # every run, not only the newest results file
    assert md.index("**Verdict**") < md.index("##")  # the verdict comes first
    verdict = md[md.index("**Verdict**"):md.index("##")]
    assert "random" in verdict and "top" in verdict
    assert (report / "plots" / "heads.png").is_file() and "plots/heads.png" in manifest["files"]


def _write_tubes(root: Path) -> None:
    """``tubes.jsonl`` in the documented row format: a frame folder at 4 fps, a segment and a frame list."""
    sys.path.insert(0, str(Path(__file__).parent))
    import probe_data_fixtures as F

    (root / "clip").mkdir()
    for k in range(8):
        F.noise_image(64, 48, k).save(root / "clip" / f"{k}.png")
    F.write_jsonl(root / "tubes.jsonl", [
        {"id": "t0", "video": "clip", "fps": 4, "segment": [0.5, 1.5], "boxes": {"2": [4, 4, 30, 30], "4": [8, 8, 40, 40]},
         "question": "What is it?", "answer": "noise"},
        {"id": "t1", "video": "clip", "fps": 4, "frames": [1, 4], "boxes": {"2": [0, 0, 20, 20]},
         "question": "Where?", "answer": "left"}])


def test_the_readme_video_lmms_eval_and_stability_blocks_run_as_written(tmp_path, tiny_dir):
    """The video scoring line, the lmms-eval block (with the CPU arguments the README names) and the
    stability block on the shipped organism."""
    qwen = str(tiny_dir("qwen2_5_vl"))
    env = {**_env(), "CORE_EVAL_CACHE": str(tmp_path / "cache")}
    (tmp_path / "head_masks").mkdir()
    video, tubes = block_commands("video: Qwen2-VL / 2.5-VL / 3-VL")
    assert "--probes video_needle" in video and "--probes video:tubes.jsonl" in tubes
    _run(video.replace("path/to/qwen2_5_vl", qwen).replace("--n 64", "--n 4"), tmp_path, env)
    assert json.loads((tmp_path / "head_masks" / "video.json").read_text())["scorer"]["probes"] == "video_needle"
    _write_tubes(tmp_path)
    _run(tubes.replace("path/to/qwen2_5_vl", qwen), tmp_path, env)
    vidstg = json.loads((tmp_path / "head_masks" / "vidstg.json").read_text())["scorer"]
    assert vidstg["probes"] == "video:tubes.jsonl" and vidstg["n_samples"] == 2
    _run(workflow_commands()[0].replace("path/to/checkpoint", qwen).replace("--n 256", "--n 8"), tmp_path, env)
    (lmms,) = block_commands("### In lmms-eval")
    lmms = lmms.replace("path/to/qwen2.5-vl", qwen).replace("ablation=zero", "ablation=zero,device_map=cpu")
    proc = _run(lmms + " --device cpu --limit 2", tmp_path, env)
    assert "Error during evaluation" not in proc.stdout + proc.stderr
    (results,) = (tmp_path / "runs" / "lmms").glob("*/*_results.json")
    data = json.loads(results.read_text())
    assert set(data["results"]) == {"core_grid_needle", "core_doc_needle", "core_video_needle"}
    assert data["config"]["core_eval"]["selection"]["rule"] == "top"
    # stability: the shipped organism and its shipped spec, from a folder laid out like the repo
    (tmp_path / "core_eval" / "organism").mkdir(parents=True)
    (tmp_path / "core_eval" / "organism" / "weights").symlink_to(REPO / "core_eval" / "organism" / "weights")
    shutil.copy(REPO / "head_masks" / "organism.json", tmp_path / "head_masks" / "organism.json")
    score, compare = block_commands("## How stable is the head set?")
    _run(score.replace("--n 64", "--n 8"), tmp_path, env)
    _run(compare, tmp_path, env)
    assert (tmp_path / "specs" / "generate.json").is_file() and any((tmp_path / "specs" / "compare").iterdir())


def test_the_readme_data_source_block_runs_as_written(tmp_path, tiny_dir):
    """``hf:`` (the README's local-copy form), ``coco:``, a JSONL of your own and ``doc_needle``, on
    data in the real schemas written next to the commands (no network)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import probe_data_fixtures as F

    cmds = block_commands("### Real grounding data")
    assert len(cmds) == 4
    refcocog = F.write_lmms_lab(tmp_path / "RefCOCOg")
    F.write_coco(tmp_path)  # annotations/instances_val2017.json + val2017/, where the command looks
    F.noise_image(64, 48, 1).save(tmp_path / "a.png")
    F.write_jsonl(tmp_path / "my_grounding.jsonl",
                  [{"image": "a.png", "question": f"What is in box {i}?", "answer": "noise",
                    "boxes": [[4 * i, 4, 20, 16]]} for i in range(3)])
    (tmp_path / "head_masks").mkdir()
    env = _env()
    for k, cmd in enumerate(cmds):
        cmd = (cmd.replace(" M ", f" {tiny_dir('llava')} ").replace("hf:lmms-lab/RefCOCOg:val", f"hf:{refcocog}:val")
               .replace("--out ...", f"--out out{k}.json").replace("--n 256", "--n 2").replace("--n 128", "--n 2"))
        _run(cmd, tmp_path, env)
    specs = [json.loads((tmp_path / p).read_text()) for p in ("head_masks/m_refcocog.json", "out1.json", "out2.json",
                                                              "out3.json")]
    assert all(s["scorer"]["n_samples"] >= 1 for s in specs)


def python_block(after: str) -> str:
    """The first python block after the README line ``after``."""
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index(after):], flags=re.S)[0]


def test_the_readme_load_and_family_blocks_run_as_written(tmp_path, tiny_dir, monkeypatch):
    """``core_eval.load`` as the README shows it (a tiny LLaVA and a spec of its own shape in place of
    llava-1.5-7b), and the outside-family declaration."""
    import numpy as np

    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.spec import spec_from_scores

    model = tiny_dir("llava")
    shape = shape_from_config(load_config(model))
    (tmp_path / "head_masks").mkdir()
    spec_from_scores({"ram": np.random.default_rng(0).random((shape.num_layers, shape.num_heads))},
                     {"name": str(model)}, {"name": "ram-v1"}, shape=shape, frac=0.25).write(tmp_path / "head_masks" / "llava.json")
    monkeypatch.chdir(tmp_path)
    code = python_block("## Load a model with an intervention")
    assert '"path/to/llava-1.5-7b-hf"' in code
    scope: dict = {}
    exec(code.replace("path/to/llava-1.5-7b-hf", str(model)), scope)
    summary = scope["loaded"].summary
    assert summary["variant"]["name"] == "zero" and summary["selection"]["rule"] == "top"
    family: dict = {}
    exec(python_block("### Add a model family"), family)
    fam = family["FAMILY"]
    assert fam.name == "mistral3" and fam.model_types == ("mistral3",) and fam.region.token_rects is family["pixtral_rects"]


def test_the_readme_organism_rebuild_block_runs_as_written(tmp_path):
    """The organism's rebuild commands (train, score, causal check, heads report) in a folder laid out
    like the repo, at toy sizes: the training steps, ``--n`` of each step and the report's ablations."""
    toy = ("--steps 3 --set phases=[] --set s1_steps=2 --set val_n=4 --set val_every=3 --set final_n=1 "
           """--set 's1_pool={"grid_needle": 20, "count_control": 10}' --set 'pool={"grid_needle": 20, "count_control": 10}' """
           """--set 'batch={"grid_needle": 4, "count_control": 2}'""")
    text = (REPO / "README.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", text[text.index("## The model organism"):], flags=re.S)[0]
    assert "core_eval.organism.train --out core_eval/organism/weights" in block
    script = (block.replace(".venv/bin/", f"{BIN}/").replace("--out core_eval/organism/weights", f"--out core_eval/organism/weights {toy}")
              .replace("--n 256", "--n 8").replace("--n 128", "--n 4").replace("--out head_masks/organism.md", "--out head_masks/organism.md --n 0"))
    (tmp_path / "head_masks").mkdir()
    _run("set -euo pipefail\n" + script, tmp_path, _env())
    spec = json.loads((tmp_path / "head_masks" / "organism.json").read_text())
    assert spec["scorer"]["n_samples"] == 8 and "causal" in spec["extra"]
    assert (tmp_path / "head_masks" / "organism.md").read_text().strip()
