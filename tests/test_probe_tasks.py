"""``--probes <lm-eval task name>``: a probe task of ``task_configs`` gives the task's generator
and YAML knobs (``--knobs`` override them key by key), while the seed stays the caller's.

Oracle: the YAMLs read here with plain ``yaml.safe_load`` (``!function`` lines dropped) and the
task's own dataset hook, ``task_configs/utils.py::probe_dataset``, loaded by path as lm-eval does.
"""

from __future__ import annotations

import json

import pytest
import yaml

from core_eval.cli import main as cli_main
from core_eval.probes import PROBE_FAMILIES, ProbeArgumentError, generate, load_probe, probe_set_hash
from core_eval.probes.tasks import probe_tasks
from core_eval.resources import tasks_dir

TASKS = tasks_dir()


def _plain_yaml(path) -> dict:
    return yaml.safe_load("\n".join(l for l in path.read_text().splitlines() if "!function" not in l)) or {}


def _visual_tasks() -> dict[str, dict]:
    """``{task: dataset_kwargs}`` of the tasks whose own or included file uses ``utils.probe_dataset``."""
    out = {}
    for path in sorted(TASKS.glob("core_*.yaml")):
        y = _plain_yaml(path)
        text = path.read_text() + ((TASKS / y["include"]).read_text() if "include" in y else "")
        if "task" in y and "custom_dataset: !function utils.probe_dataset" in text:
            out[y["task"]] = y["dataset_kwargs"]
    return out


def test_every_visual_task_gives_its_own_datasets_samples(tu):
    want = _visual_tasks()
    assert {"core_grid_needle", "core_grid_needle_8x8", "core_text_lookup"} <= set(want)
    assert set(probe_tasks()) == set(want)
    changed = 0
    for task, kw in want.items():
        got = load_probe(task, n=2, seed=7)
        ref = tu.probe_dataset(**kw, core_probe_seed=7, core_probe_n=2)["test"]
        assert [s.id for s in got] == ref["id"], task
        for s, row in zip(got, ref):
            assert (s.question, s.answer, s.family) == (row["question"], row["answer"], kw["probe_family"]), task
            assert json.dumps(s.meta, sort_keys=True) == row["meta"], task
            assert json.dumps([b.to_dict() for b in s.boxes]) == row["boxes"], task
            assert [im.convert("RGB").tobytes() for im in s.images] == \
                   [im.convert("RGB").tobytes() for im in row["images"]], task
        # the YAML knobs are used: some tasks differ from their family's defaults
        changed += probe_set_hash(got) != probe_set_hash(generate(kw["probe_family"], 2, seed=7))
    assert changed >= 3


def test_knobs_override_key_by_key_and_seed_is_the_callers(tu):
    kw = _visual_tasks()["core_grid_needle_8x8"]
    got = load_probe("core_grid_needle_8x8", n=3, seed=3, grid=6)
    want = generate("grid_needle", 3, seed=3, **{**kw["probe_knobs"], "grid": 6})
    assert probe_set_hash(got) == probe_set_hash(want)
    assert got[0].meta["knobs"]["image_size"] == kw["probe_knobs"]["image_size"] == 896
    # no seed given: the API default (0), not the task's evaluation seed
    assert kw["probe_seed"] == 1000
    assert probe_set_hash(load_probe("core_grid_needle_8x8", n=3)) == \
           probe_set_hash(generate("grid_needle", 3, seed=0, **kw["probe_knobs"]))


@pytest.mark.parametrize("name,expect", [
    ("core_no_such_task", ["neither a probe family, a probe task nor a .jsonl path"]),
    ("core_text_needle", ["text-only"]),
    ("core_probes", ["task group", "core_grid_needle"]),
])
def test_bad_task_names_fail_before_model_load(tmp_path, capsys, name, expect):
    with pytest.raises(ProbeArgumentError):
        load_probe(name, n=1)
    rc = cli_main(["score", "--model", str(tmp_path / "no_such_model"), "--out", str(tmp_path / "s.json"),
                   "--probes", name])
    err = capsys.readouterr().err
    assert rc == 2 and "core-eval score: error:" in err
    for part in expect + sorted(_visual_tasks()):
        assert part in err, (part, err)
    if name == "core_no_such_task":
        assert all(f in err for f in PROBE_FAMILIES), err
    assert "no_such_model" not in err and not (tmp_path / "s.json.partial").exists()


def test_scoring_on_the_evaluation_seed_warns(tmp_path):
    import warnings

    from core_eval.scoring.ram import ScoreConfig, score

    def run(seed):
        cfg = ScoreConfig(probes="core_grid_needle", n=1, seed=seed)
        with warnings.catch_warnings(record=True) as caught, pytest.raises((ValueError, OSError)):
            warnings.simplefilter("always")
            score(str(tmp_path / "no_such_model"), tmp_path / "s.json", cfg, progress=False)
        return [str(w.message) for w in caught if "evaluation seed" in str(w.message)]

    assert run(1000) and "core_grid_needle" in run(1000)[0]
    assert not run(0)
