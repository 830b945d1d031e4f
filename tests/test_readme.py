"""The README's workflow (score -> select -> lm_eval -> report) runs as written, offline, at tiny sizes.

The block under "Score heads, then evaluate without them" is read from README.md itself; only the
checkpoint (a tiny LLaVA), ``--n`` and the number of evaluated samples (``--limit``) change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECTION = "## Score heads, then evaluate without them"


def workflow_commands() -> list[str]:
    """The shell commands of the README's workflow block, continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = re.search(re.escape(SECTION) + r"\n+```bash\n(.*?)```", text, flags=re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


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
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmds = workflow_commands()
    for cmd in cmds:
        cmd = cmd.replace("path/to/checkpoint", str(model)).replace("--n 256", "--n 12")
        if cmd.startswith("lm_eval"):
            cmd += " --limit 6"
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-4000:]}"
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
