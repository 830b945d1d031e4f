"""RAM scoring end to end (DESIGN §3): ``score()``, ``aggregate``, ``core-eval score`` / ``select``.

1. Planted retrieval heads (see ``scoring_planted.py``) rank on top through the real pipeline
   (``from_pretrained`` -> capture -> spec), and their RAM equals an independent eager
   ``output_attentions`` computation.
2. A killed ``core-eval score`` resumes from its partial folder and gives the same spec as an
   uninterrupted run; other settings against the partial folder are refused.
3. Bad probe rows are all reported, by line number, before any model is loaded.
4. ``core-eval select`` derives top / bottom / random / layer-matched random sets.
5. ``--only-correct`` with nothing correct is a clear error; ``aggregate`` on hand-made arrays.
6. The spec records its provenance, and with no ``frac``/``k`` selects the top 5% by RAM.
7. ``--probes <lm-eval task>`` scores the task's own samples layout (its YAML knobs) at the score seed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import scoring_planted as P
import yaml

from core_eval.cli import main as cli_main
from core_eval.probes import generate, probe_set_hash, read_jsonl
from core_eval.resources import tasks_dir
from core_eval.scoring.ram import ScoreConfig, aggregate, score
from core_eval.spec import load_head_spec

PLANTED = [(0, 1), (0, 2), (1, 3)]
SCORE_KEYS = ("ram", "lift", "visual_mass", "std", "n")
GRID_KNOBS = {"grid": 3, "image_size": 96}


def _check_provenance(scorer: dict, *, seed: int, probe_hash: str, query_rows: str = "answer") -> None:
    assert scorer["seed"] == seed and scorer["probe_hash"] == probe_hash
    assert scorer["query_rows"] == query_rows and scorer["dtype"] == "float32"  # the tiny models' dtype
    assert scorer["core_eval_version"] == importlib.metadata.version("core-eval")


def _expected_top(spec, frac: float) -> list[tuple[int, int]]:
    """DESIGN §3 by hand: the round-half-up(frac x heads) (>= 1) best heads by RAM, ties by lift."""
    ram, lift = np.asarray(spec.scores["ram"]), np.asarray(spec.scores["lift"])
    L, H = ram.shape
    k = max(1, int(frac * L * H + 0.5))
    ranked = sorted(((layer, h) for layer in range(L) for h in range(H)),
                    key=lambda x: (-ram[x], -lift[x], x))
    return sorted(ranked[:k])


# --------------------------------------------------------------------------- 1. planted heads


@pytest.fixture(scope="module")
def planted(tiny_dir, tmp_path_factory):
    """``(model_dir, scoring_probes_jsonl, eager_mass (L, H))``. The key directions are fitted on
    one probe set and the heads are scored on another (fresh white-cell positions)."""
    root = tmp_path_factory.mktemp("planted")
    fit = P.make_probes(root / "fit", 16, seed=0)
    probes = P.make_probes(root / "score", 12, seed=1)
    model_dir = P.build_planted(tiny_dir("llava"), root / "model", fit,
                                layer0_heads=[h for layer, h in PLANTED if layer == 0],
                                layer1_head=next(h for layer, h in PLANTED if layer == 1))
    return model_dir, probes, P.eager_white_mass(model_dir, probes)


@pytest.fixture(scope="module")
def planted_spec(planted, tmp_path_factory):
    model_dir, probes, _ = planted
    out = tmp_path_factory.mktemp("planted_spec") / "spec.json"
    cfg = ScoreConfig(probes=str(probes), n=12, batch_size=5, frac=0.25)
    spec = score(str(model_dir), out, cfg, progress=False)
    return out, spec


def test_planted_construction_is_real(planted):
    """Independent of core_eval's capture: eager attention puts the planted heads' answer-row mass
    on the white cell, and nobody else's."""
    _, _, mass = planted
    mass = mass.numpy()
    for layer, head in PLANTED:
        assert mass[layer, head] > 0.9, (layer, head, mass)
    others = np.delete(mass.ravel(), [layer * mass.shape[1] + h for layer, h in PLANTED])
    assert others.max() < 0.1, mass


def test_planted_heads_rank_on_top(planted, planted_spec):
    _, _, eager = planted
    out, spec = planted_spec
    assert out.is_file() and not Path(str(out) + ".partial").exists()
    disk = load_head_spec(out)
    assert disk == spec
    ram = np.asarray(disk.scores["ram"])
    L, H = ram.shape
    assert (L, H) == (3, 4)
    order = [divmod(int(i), H) for i in np.argsort(-ram.ravel(), kind="stable")]
    assert sorted(order[:3]) == PLANTED, ram
    # the spec's own top-frac selection (0.25 * 12 = 3 heads) is the planted set
    assert sorted(tuple(h) for h in disk.heads) == PLANTED
    assert disk.selection["rule"] == "top" and disk.selection["score"] == "ram"
    planted_ram = np.array([ram[layer, h] for layer, h in PLANTED])
    assert planted_ram.min() > 0.9
    assert np.median(ram) < 0.05
    # RAM from the product's capture (SDPA + observer) == the eager output_attentions reference
    np.testing.assert_allclose(ram, eager.numpy(), atol=1e-4)
    # one target token out of 16 visual tokens: lift = RAM * 16; planted heads' visual mass = RAM
    lift = np.asarray(disk.scores["lift"])
    np.testing.assert_allclose(lift, ram * 16, rtol=1e-5)
    vis = np.asarray(disk.scores["visual_mass"])
    assert (vis + 1e-6 >= ram).all()
    for layer, h in PLANTED:
        assert vis[layer, h] == pytest.approx(ram[layer, h], abs=1e-3)
    assert (np.asarray(disk.scores["n"]) == 12).all()
    assert np.asarray(disk.scores["std"]).max() < 0.5
    sc = disk.scorer
    assert sc["name"] == "ram-v1"
    _, probes, _ = planted
    _check_provenance(sc, seed=0, probe_hash=probe_set_hash(read_jsonl(probes)))
    assert sc["n_samples"] == 12 and sc["n_used"] == 12 and sc["dropped_empty_region"] == 0
    assert disk.model["num_layers"] == 3 and disk.model["num_heads"] == 4


@pytest.mark.parametrize("query_rows", ["last", "generate"])
def test_planted_heads_rank_on_top_other_query_rows(planted, tmp_path, query_rows):
    model_dir, probes, _ = planted
    cfg = ScoreConfig(probes=str(probes), n=6, batch_size=3, frac=0.25, query_rows=query_rows, max_new_tokens=3)
    spec = score(str(model_dir), tmp_path / "spec.json", cfg, progress=False)
    ram = np.asarray(spec.scores["ram"])
    assert sorted(tuple(h) for h in spec.heads) == PLANTED, ram
    assert min(ram[layer, h] for layer, h in PLANTED) > 0.9
    assert np.median(ram) < 0.1
    assert spec.scorer["query_rows"] == query_rows


# --------------------------------------------------------------------------- 2. resume after a kill


def _cli() -> str:
    exe = Path(sys.executable).parent / "core-eval"
    assert exe.is_file(), f"console script not found next to {sys.executable}"
    return str(exe)


def _batches(partial: Path) -> list[Path]:
    return sorted(partial.glob("batch_*.safetensors"))


def test_resume_after_kill(tiny_dir, tmp_path, capsys):
    model = tiny_dir("llava")
    out = tmp_path / "spec.json"
    partial = tmp_path / "spec.json.partial"
    n, bs = 32, 2
    n_batches = n // bs
    args = ["score", "--model", str(model), "--out", str(out), "--n", str(n), "--batch-size", str(bs),
            "--knobs", json.dumps(GRID_KNOBS), "--frac", "0.25"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    proc = subprocess.Popen([_cli(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_batches(partial)) < 2:
            assert proc.poll() is None, f"core-eval score exited ({proc.returncode}) before 2 batches were written"
            assert time.monotonic() < deadline, "no 2 batch files within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; use more samples"

    assert not out.exists()
    done = _batches(partial)
    k = len(done)
    assert 2 <= k < n_batches
    assert (partial / "meta.json").is_file()
    # every file named like a batch is a whole batch (temp file + rename)
    for f in done:
        b = safetensors.torch.load_file(f)
        assert b["ram"].shape == (bs, 3, 4) and b["correct"].shape == (bs,)
    # a half-written temp file left by the kill must not be taken for a batch, nor break the rerun
    nxt = next(b for b in range(n_batches) if not (partial / f"batch_{b:05d}.safetensors").exists())
    (partial / f".batch_{nxt:05d}.safetensors.abc123.tmp").write_bytes(b"\x80\x02 half-written")

    # other settings against the partial folder: a clear error, and the partial run is kept
    rc = cli_main([*args, "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "different settings" in err and str(partial) in err
    assert len(_batches(partial)) == k and not out.exists()

    # rerun the same command (in this process: a second interpreter start-up costs more than the
    # scoring): resumes at k/n_batches and completes
    t0 = time.monotonic()
    rc = cli_main(args)
    t_resume = time.monotonic() - t0
    res = capsys.readouterr()
    assert rc == 0, res.err[-3000:]
    assert f"wrote {out}" in res.out
    m = re.search(r"RAM scoring:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)", res.err)
    assert m, res.err[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (k, n_batches), "the rerun did not start from the saved batches"
    assert out.is_file() and not partial.exists()

    # identical to an uninterrupted run
    ref_out = tmp_path / "ref" / "spec.json"
    ref = score(str(model), ref_out, ScoreConfig(n=n, batch_size=bs, knobs=GRID_KNOBS, frac=0.25), progress=False)
    got = load_head_spec(out)
    for key in SCORE_KEYS:
        np.testing.assert_allclose(np.asarray(got.scores[key]), np.asarray(ref.scores[key]), atol=1e-6, rtol=0,
                                   err_msg=key)
    assert got.scorer["probe_hash"] == ref.scorer["probe_hash"]
    assert got.scorer["n_used"] == ref.scorer["n_used"] == n
    assert got.heads == ref.heads
    print(f"killed after {k}/{n_batches} batches; resumed run took {t_resume:.1f} s")


# --------------------------------------------------------------------------- 3. bad probe rows


def test_bad_probe_rows_listed_before_model_load(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import core_eval.loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the probe file was validated")

    monkeypatch.setattr(core_eval.loading, "load", no_load)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    good = {"image": "a.png", "question": "q?", "answer": "x", "boxes": [[0, 0, 8, 8]]}
    lines = [
        json.dumps({**good, "id": "ok1"}),                                   # 1 ok
        json.dumps({**good, "id": "out", "boxes": [[0, 0, 40, 8]]}),         # 2 box outside the 32x32 image
        '{"image": "a.png", "question": "q?", "answer": ',                   # 3 malformed JSON
        json.dumps({**good, "id": "noimg", "image": "missing.png"}),         # 4 missing image file
        "",                                                                  # 5 blank: skipped
        json.dumps({**good, "id": "flat", "boxes": [[10, 0, 10, 8]]}),       # 6 x1 <= x0
        json.dumps({**good, "id": "ok2"}),                                   # 7 ok
        json.dumps({**good, "id": "swap", "boxes": [[8, 8, 4, 2]]}),         # 8 x1 <= x0 and y1 <= y0
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    rc = cli_main(["score", "--model", str(tmp_path / "no_such_model"), "--probes", str(bad),
                   "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "5 invalid row(s)" in err, err
    listed = {int(x) for x in re.findall(r"line (\d+):", err)}
    assert listed == {2, 3, 4, 6, 8}, err
    for pattern in (r"line 2:.*outside the image", r"line 3:.*malformed JSON", r"line 4:.*not found",
                    r"line 6:.*x1 \(10\) <= x0 \(10\)", r"line 8:.*x1 \(4\) <= x0 \(8\).*y1 \(2\) <= y0 \(8\)"):
        assert re.search(pattern, err), (pattern, err)
    assert "no_such_model" not in err  # the model path was never looked at
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "s.json.partial").exists()


# --------------------------------------------------------------------------- 4. select


def _select(spec_path: Path, out: Path, *extra: str):
    assert cli_main(["select", str(spec_path), "--out", str(out), *extra]) == 0
    return load_head_spec(out)  # re-validates: the head list must equal the rule re-applied


def test_select_rules(planted_spec, tmp_path, capsys):
    spec_path, spec = planted_spec
    ram = np.asarray(spec.scores["ram"])
    top = _select(spec_path, tmp_path / "top.json", "--rule", "top", "--k", "3")
    assert sorted(map(tuple, top.heads)) == PLANTED
    bottom = _select(spec_path, tmp_path / "bottom.json", "--rule", "bottom", "--k", "3")
    assert len(top.heads) == len(bottom.heads) == 3
    lowest = sorted(divmod(int(i), 4) for i in np.argsort(ram.ravel(), kind="stable")[:3])
    assert sorted(map(tuple, bottom.heads)) == lowest
    assert not set(map(tuple, bottom.heads)) & set(PLANTED)

    rand, lmr = {}, {}
    for seed in range(6):
        r = _select(spec_path, tmp_path / f"r{seed}.json", "--rule", "random", "--k", "3", "--seed", str(seed))
        m = _select(spec_path, tmp_path / f"m{seed}.json", "--rule", "layer_matched_random", "--k", "3",
                    "--seed", str(seed))
        rand[seed], lmr[seed] = tuple(map(tuple, r.heads)), tuple(map(tuple, m.heads))
        for heads in (rand[seed], lmr[seed]):
            assert len(set(heads)) == 3
            assert not set(heads) & set(PLANTED), heads
        assert sorted(layer for layer, _ in lmr[seed]) == [0, 0, 1]  # same layers as the top set
        assert r.selection["seed"] == seed and r.selection["rule"] == "random"
        for key in SCORE_KEYS:  # scores untouched
            np.testing.assert_array_equal(np.asarray(r.scores[key]), np.asarray(spec.scores[key]))
    # seeded: same seed -> same set; different seeds do not all agree
    again = _select(spec_path, tmp_path / "again.json", "--rule", "random", "--k", "3", "--seed", "3")
    assert tuple(map(tuple, again.heads)) == rand[3]
    assert len(set(rand.values())) > 1 and len(set(lmr.values())) > 1
    # frac 0.25 of 12 heads == k 3
    f = _select(spec_path, tmp_path / "frac.json", "--rule", "top", "--frac", "0.25")
    assert f.heads == top.heads
    capsys.readouterr()


# --------------------------------------------------------------------------- 5. only_correct, aggregate


def test_only_correct_with_nothing_correct(tiny_dir, tmp_path, capsys):
    model = tiny_dir("llava")
    out = tmp_path / "spec.json"
    args = ["score", "--model", str(model), "--out", str(out), "--n", "4", "--batch-size", "4",
            "--knobs", json.dumps(GRID_KNOBS)]
    rc = cli_main([*args, "--only-correct"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "answers none correctly" in err and "--only-correct" in err, err
    assert not out.exists()
    # the scored batches are kept: the same run without the filter completes from them
    assert cli_main(args) == 0
    spec = load_head_spec(out)
    assert spec.scorer["only_correct"] is False and spec.scorer["accuracy"] == 0.0
    assert spec.scorer["n_used"] == 4
    assert not Path(str(out) + ".partial").exists()
    # provenance, and the default selection (no --frac / --k): the top 5% by RAM
    _check_provenance(spec.scorer, seed=0, probe_hash=probe_set_hash(generate("grid_needle", 4, seed=0, **GRID_KNOBS)))
    assert spec.scorer["probes"] == "grid_needle" and spec.scorer["knobs"] == GRID_KNOBS
    assert spec.selection["rule"] == "top" and spec.selection["frac"] == 0.05
    assert sorted(map(tuple, spec.heads)) == _expected_top(spec, 0.05)


def _per_sample():
    g = np.random.default_rng(0)
    N, L, H = 6, 2, 3
    return {
        "ram": g.uniform(0, 0.5, (N, L, H)).astype(np.float32),
        "visual_mass": g.uniform(0.5, 1.0, (N, L, H)).astype(np.float32),
        "region_frac": np.array([0.25, 0.5, 0.125, 0.0, 1.0, 0.0625], dtype=np.float32),
        "n_region": np.array([4, 8, 2, 0, 16, 1], dtype=np.float32),
        "correct": np.array([True, False, True, True, True, False]),
        "rows": np.array([3, 1, 2, 2, 0, 5]),
        "ids": [f"s{i}" for i in range(N)],
    }


@pytest.mark.parametrize("only_correct", [False, True])
def test_aggregate_by_hand(only_correct):
    ps = _per_sample()
    # sample 3: empty region; sample 4: no query rows; with only_correct also 1 and 5 (wrong)
    use = [0, 2] if only_correct else [0, 1, 2, 5]
    scores, record = aggregate(ps, only_correct)
    ram = ps["ram"][use].astype(np.float64)
    np.testing.assert_allclose(scores["ram"], ram.mean(0), rtol=1e-6)
    np.testing.assert_allclose(scores["std"], ram.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores["visual_mass"], ps["visual_mass"][use].mean(0), rtol=1e-6)
    lift = np.mean([ps["ram"][i] / ps["region_frac"][i] for i in use], axis=0)  # per sample, then mean
    np.testing.assert_allclose(scores["lift"], lift, rtol=1e-6)
    assert not np.allclose(scores["lift"], scores["ram"] / ps["region_frac"][use].mean())
    np.testing.assert_array_equal(scores["n"], np.full((2, 3), len(use)))
    for v in scores.values():
        assert v.shape == (2, 3) and np.isfinite(v).all()
    assert record["n_samples"] == 6 and record["n_used"] == len(use)
    assert record["dropped_empty_region"] == 1  # sample 3 only
    assert record["accuracy"] == pytest.approx(4 / 6)
    assert record["only_correct"] is only_correct


def test_aggregate_nothing_usable():
    ps = _per_sample()
    ps["correct"][:] = False
    with pytest.raises(ValueError, match="answers none correctly"):
        aggregate(ps, only_correct=True)
    ps["n_region"][:] = 0
    with pytest.raises(ValueError, match="no target region"):
        aggregate(ps, only_correct=False)


# --------------------------------------------------------------------------- resume safety and clean CLI errors


class _Killed(Exception):
    pass


def test_resume_refuses_changed_probe_file(tiny_dir, tmp_path, monkeypatch):
    import core_eval.scoring.checkpoints as C
    from core_eval.probes import generate, write_jsonl

    model = str(tiny_dir("llava"))
    probes = write_jsonl(generate("grid_needle", 6, seed=0, **GRID_KNOBS), tmp_path / "p.jsonl")
    cfg = ScoreConfig(probes=str(probes), n=6, batch_size=2)
    out = tmp_path / "spec.json"
    save = C.save_batch

    def save_then_die(obj, path, key):  # a run killed right after its first two batches
        save(obj, path, key)
        if len(list(path.parent.glob("batch_*.safetensors"))) == 2:
            raise _Killed

    monkeypatch.setattr(C, "save_batch", save_then_die)
    with pytest.raises(_Killed):
        score(model, out, cfg, progress=False)
    monkeypatch.setattr(C, "save_batch", save)
    # the user fixes the boxes: whole images now
    rows = [json.loads(line) for line in probes.read_text().splitlines()]
    probes.write_text("".join(json.dumps({**r, "boxes": []}) + "\n" for r in rows))
    fresh = score(model, tmp_path / "fresh.json", cfg, progress=False)
    try:
        resumed = score(model, out, cfg, progress=False)
    except ValueError as e:  # refusing the stale partial run is fine
        assert "partial" in str(e)
        return
    np.testing.assert_allclose(np.asarray(resumed.scores["ram"]), np.asarray(fresh.scores["ram"]), atol=1e-6)


@pytest.mark.parametrize("extra", [["--probes", "no_such_family"], ["--knobs", '{"bogus": 1}'],
                                   ["--image-root", "."]])
def test_cli_probe_argument_errors_are_clean(tmp_path, capsys, extra):
    rc = cli_main(["score", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "s.json"), *extra])
    assert rc == 2
    assert "core-eval score: error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- 7. an lm-eval task as the probe set


def test_score_with_task_name(tiny_dir, tmp_path, capsys):
    """``--probes core_grid_needle_8x8``: the samples of the task's own dataset hook at the score seed
    (0, not the task's 1000), the YAML's knobs in the spec; 40 heads, so the default 5% is 2 heads."""
    task = "core_grid_needle_8x8"
    path = tasks_dir() / f"{task}.yaml"
    kw = yaml.safe_load("\n".join(l for l in path.read_text().splitlines() if "!function" not in l))["dataset_kwargs"]
    spec_file = importlib.util.spec_from_file_location("core_task_utils_for_scoring", tasks_dir() / "utils.py")
    tu = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(tu)
    model = tiny_dir("llava", layers=5, heads=8)
    out = tmp_path / "spec.json"
    rc = cli_main(["score", "--model", str(model), "--out", str(out), "--probes", task, "--n", "4",
                   "--batch-size", "4"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    spec = load_head_spec(out)
    sc = spec.scorer
    own = tu._samples(**kw, core_probe_seed=0, core_probe_n=4)  # what the task's probe_dataset serves
    _check_provenance(sc, seed=0, probe_hash=probe_set_hash(own))
    assert sc["knobs"] == kw["probe_knobs"] and sc["knobs"]["grid"] == 8
    assert sc["probes"] == task
    assert sc["probe_task"] == {"name": task, "family": kw["probe_family"], "eval_seed": kw["probe_seed"]}
    assert np.asarray(spec.scores["ram"]).shape == (5, 8)
    assert spec.selection["rule"] == "top" and spec.selection["frac"] == 0.05
    assert len(spec.heads) == 2 and sorted(map(tuple, spec.heads)) == _expected_top(spec, 0.05)
