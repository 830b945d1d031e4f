"""Reliability of scoring and spec files (issue 17, item 8): faults tried from outside.

Every test here failed on the code before the fix (cb5a3ea); each one is written against the
public entry points (``score``, ``core_eval.plan``, ``load_head_spec``, ``read_jsonl``), so it
runs unchanged on either version:

1. a planted pickle in ``<out>.partial/`` never runs; the file is named and refused;
2. resuming after the weights were overwritten is refused (the spec would mix two models);
3. a spec recorded for another family of the same shape is refused unless allowed;
4. a corrupt batch, a corrupt ``meta.json``, ``--out`` a directory and ``<out>.partial`` a file fail
   before the model loads, naming the file;
5. a stray file in ``<out>.partial/`` survives a successful run;
6. legacy files with empty score lists or missing heads, negative RAM, a garbage ``means=`` file,
   a UTF-8 BOM in probe JSONL and a truncated PNG referenced by a probe row.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core_eval
import core_eval.loading
import core_eval.scoring.ram as R
from core_eval.adapters import shape_from_config
from core_eval.loading import load_config
from core_eval.probes import ProbeDataError, generate, read_jsonl, write_jsonl
from core_eval.scoring.ram import ScoreConfig, score
from core_eval.spec import HeadSpecError, load_head_spec, spec_from_scores

GRID_KNOBS = {"grid": 3, "image_size": 96}
REPO = Path(__file__).resolve().parents[1]


def _shipped_heads() -> list[tuple[int, int]]:
    """The shipped organism spec's selection, read as plain JSON (not through the spec reader)."""
    sel = json.loads((REPO / "head_masks" / "organism.json").read_text())["selection"]["heads"]
    assert len(sel) == 2  # top 5% of 48 heads
    return [tuple(h) for h in sel]


class _Killed(Exception):
    pass


class _Loaded(Exception):
    pass


def _cfg(**kw):
    return ScoreConfig(n=6, batch_size=2, knobs=GRID_KNOBS, **kw)


def _killed_run(monkeypatch, model, out: Path, cfg, batches: int = 1) -> Path:
    """Run ``score`` and kill it (an exception) after ``batches`` finished batches. Returns the partial folder."""
    real = R.score_batch
    calls = []

    def die_after(*a, **k):
        if len(calls) == batches:
            raise _Killed
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(R, "score_batch", die_after)
    with pytest.raises(_Killed):
        score(str(model), out, cfg, progress=False)
    monkeypatch.setattr(R, "score_batch", real)
    partial = out.with_name(out.name + ".partial")
    assert len(list(partial.glob("batch_*"))) == batches
    return partial


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model is the long step: these errors must come before it."""

    def boom(*a, **k):
        raise _Loaded("the model was loaded before the bad input was rejected")

    monkeypatch.setattr(core_eval.loading, "load", boom)


@pytest.fixture
def llava_copy(tiny_dir, tmp_path):
    return Path(shutil.copytree(tiny_dir("llava"), tmp_path / "llava"))


# --------------------------------------------------------------------------- 1. no code execution on resume


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_planted_pickle_never_runs(monkeypatch, tiny_dir, tmp_path):
    out = tmp_path / "spec.json"
    partial = _killed_run(monkeypatch, tiny_dir("llava"), out, _cfg())
    marker = tmp_path / "marker"
    for f in partial.glob("batch_*"):  # replace the finished batch, whatever its file format
        torch.save({"ram": _Payload(str(marker))}, f)
    torch.save({"ram": _Payload(str(marker))}, partial / "batch_00001.pt")  # and plant an old-style batch
    with pytest.raises(Exception) as ei:
        score(str(tiny_dir("llava")), out, _cfg(), progress=False)
    assert not marker.exists(), "a pickle planted in the partial folder ran"
    assert isinstance(ei.value, ValueError), ei.value  # a clear error, not a crash
    assert "batch_0000" in str(ei.value) and str(partial) in str(ei.value)
    assert not out.exists()


# --------------------------------------------------------------------------- 2. weights changed mid-run


def test_resume_refuses_overwritten_weights(monkeypatch, llava_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "spec.json"
    partial = _killed_run(monkeypatch, llava_copy, out, _cfg(), batches=2)
    weights = llava_copy / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in load_file(weights).items()}
    save_file(state, str(weights), metadata={"format": "pt"})  # another checkpoint, same shapes
    monkeypatch.setattr(core_eval.loading, "load", lambda *a, **k: (_ for _ in ()).throw(_Loaded()))
    with pytest.raises(ValueError) as ei:
        score(str(llava_copy), out, _cfg(), progress=False)
    msg = str(ei.value)
    assert "weights" in msg and "model.safetensors" in msg and str(partial) in msg
    assert f"rm -r {partial}" in msg  # how to restart
    assert not out.exists() and len(list(partial.glob("batch_*"))) == 2  # the partial run is kept


# --------------------------------------------------------------------------- 3. shape is not identity


def _same_shape_spec(path: Path, model_dir: Path, *, family: str, architecture: str) -> Path:
    shape = shape_from_config(load_config(model_dir))
    ram = np.random.default_rng(0).random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": "some/qwen2-vl", "architecture": architecture},
                            {"name": "ram-v1", "family": family}, shape=shape, frac=0.25)
    return spec.write(path)


def test_spec_of_another_architecture_is_refused(tiny_dir, tmp_path):
    model = tiny_dir("llava")
    foreign = _same_shape_spec(tmp_path / "qwen.json", model, family="qwen2_vl",
                               architecture="Qwen2VLForConditionalGeneration")
    with pytest.raises(ValueError) as ei:
        core_eval.plan(str(model), spec=foreign, heads="top")
    msg = str(ei.value)
    assert "qwen2_vl" in msg and "llava" in msg and str(foreign) in msg and "allow_foreign_spec" in msg
    with pytest.warns(UserWarning, match="allow_foreign_spec"):  # the documented override
        p = core_eval.plan(str(model), spec=foreign, heads="spec", allow_foreign_spec=True)
    assert len(p.heads) == len(load_head_spec(foreign).heads)
    # through the harness arguments (core_hf / core-vlmeval share them)
    from core_eval.options import make_plan, parse_core_args

    with pytest.raises(ValueError, match="allow_foreign_spec"):
        make_plan(str(model), parse_core_args({"head_spec": str(foreign), "heads": "top"}))
    with pytest.warns(UserWarning):
        make_plan(str(model), parse_core_args({"head_spec": str(foreign), "heads": "top",
                                               "allow_foreign_spec": "true"}))
    # the spec of this very family, and a hand-made spec that records no identity, load silently
    own = _same_shape_spec(tmp_path / "own.json", model, family="llava", architecture="LlavaForConditionalGeneration")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core_eval.plan(str(model), spec=own, heads="top")
    organism = REPO / "core_eval" / "organism" / "weights"
    assert core_eval.plan(str(organism), spec=REPO / "head_masks" / "organism.json").heads == _shipped_heads()


# --------------------------------------------------------------------------- 4. the partial folder, checked first


def test_corrupt_batch_named_before_model_load(monkeypatch, tiny_dir, tmp_path):
    out = tmp_path / "spec.json"
    partial = _killed_run(monkeypatch, tiny_dir("llava"), out, _cfg(), batches=2)
    bad = sorted(partial.glob("batch_*"))[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
    monkeypatch.setattr(core_eval.loading, "load", lambda *a, **k: (_ for _ in ()).throw(_Loaded()))
    with pytest.raises(ValueError) as ei:
        score(str(tiny_dir("llava")), out, _cfg(), progress=False)
    assert str(bad) in str(ei.value) and "delete" in str(ei.value)


def test_corrupt_meta_named_before_model_load(monkeypatch, tiny_dir, tmp_path):
    out = tmp_path / "spec.json"
    partial = _killed_run(monkeypatch, tiny_dir("llava"), out, _cfg())
    (partial / "meta.json").write_text('{"key": "abc", "config": ')
    monkeypatch.setattr(core_eval.loading, "load", lambda *a, **k: (_ for _ in ()).throw(_Loaded()))
    with pytest.raises(ValueError) as ei:
        score(str(tiny_dir("llava")), out, _cfg(), progress=False)
    assert str(partial / "meta.json") in str(ei.value)


@pytest.mark.parametrize("case", ["out_is_dir", "partial_is_file"])
def test_bad_output_paths_fail_first(tiny_dir, tmp_path, no_model_load, case):
    from core_eval.cli import main as cli_main

    out = tmp_path / "spec.json"
    if case == "out_is_dir":
        out.mkdir()
        named = out
    else:
        named = tmp_path / "spec.json.partial"
        named.write_text("not a folder")
    with pytest.raises(ValueError) as ei:
        score(str(tiny_dir("llava")), out, _cfg(), progress=False)
    assert str(named) in str(ei.value)
    rc = cli_main(["score", "--model", str(tiny_dir("llava")), "--out", str(out), "--n", "4",
                   "--knobs", json.dumps(GRID_KNOBS)])
    assert rc == 2


# --------------------------------------------------------------------------- 5. only what we wrote is deleted


def test_stray_file_in_partial_survives(monkeypatch, tiny_dir, tmp_path):
    out = tmp_path / "spec.json"
    partial = _killed_run(monkeypatch, tiny_dir("llava"), out, _cfg())
    notes = partial / "my_notes.txt"
    notes.write_text("kept")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = score(str(tiny_dir("llava")), out, _cfg(), progress=False)
    assert out.is_file() and spec.scorer["n_used"] == 6
    assert notes.read_text() == "kept"
    assert sorted(p.name for p in partial.iterdir()) == ["my_notes.txt"]  # ours are gone
    assert any("my_notes.txt" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- 6. silent acceptances


def _rh(tmp_path, values: dict) -> Path:
    p = tmp_path / "rh.json"
    p.write_text(json.dumps(values))
    return p


def test_retrieval_head_empty_lists_and_missing_heads(tmp_path):
    empty = {f"{l}-{h}": [] for l in range(2) for h in range(4)}
    with pytest.raises(HeadSpecError, match=r"8 of 8 heads have an empty score list"):
        load_head_spec(_rh(tmp_path, empty))
    some_empty = {f"{l}-{h}": [0.1 * h] for l in range(2) for h in range(4)}
    some_empty["1-2"] = []
    with pytest.raises(HeadSpecError, match=r"'1-2'"):
        load_head_spec(_rh(tmp_path, some_empty))
    missing = {f"{l}-{h}": [0.5] for l in range(2) for h in range(4) if (l, h) != (0, 1)}
    with pytest.raises(HeadSpecError, match=r"1 of the 8 heads.*missing.*'0-1'") as ei:
        load_head_spec(_rh(tmp_path, missing))
    assert str(tmp_path / "rh.json") in str(ei.value)


def test_negative_ram_in_spec(tmp_path):
    d = json.loads((REPO / "head_masks" / "organism.json").read_text())
    d["scores"]["ram"][2][5] = -0.25
    p = tmp_path / "neg.json"
    p.write_text(json.dumps(d))
    with pytest.raises(HeadSpecError, match=r"scores\.ram\[2\]\[5\] is -0\.25, outside") as ei:
        load_head_spec(p)
    assert str(p) in str(ei.value)
    d["scores"]["ram"][2][5] = 0.1
    d["scores"]["lift"][0][0] = -1.0
    p.write_text(json.dumps(d))
    with pytest.raises(HeadSpecError, match=r"scores\.lift\[0\]\[0\]"):
        load_head_spec(p)


def test_garbage_means_file_named(tiny_dir, tmp_path):
    model = tiny_dir("llava")
    shape = shape_from_config(load_config(model))
    spec = spec_from_scores({"ram": np.random.default_rng(0).random((shape.num_layers, shape.num_heads))},
                            {"name": "tiny"}, {"name": "ram-v1"}, shape=shape, frac=0.25).write(tmp_path / "s.json")
    garbage = tmp_path / "garbage.means.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all" * 4)
    with pytest.raises(ValueError) as ei:
        core_eval.plan(str(model), spec=spec, heads="top", ablation="mean", means=garbage)
    assert str(garbage) in str(ei.value)
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.means.safetensors"
    save_file({"head_means": torch.zeros(shape.num_layers + 1, shape.num_heads, shape.head_dim)}, str(wrong))
    with pytest.raises(ValueError, match=r"shape") as ei:  # before the weights, not when applying
        core_eval.plan(str(model), spec=spec, heads="top", ablation="mean", means=wrong)
    assert str(wrong) in str(ei.value)


def test_probe_jsonl_accepts_bom_like_the_spec_reader(tmp_path):
    samples = generate("grid_needle", 2, seed=0, **GRID_KNOBS)
    path = write_jsonl(samples, tmp_path / "p.jsonl")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    back = read_jsonl(path)
    assert [s.id for s in back] == [s.id for s in samples]
    spec = tmp_path / "spec.json"  # the spec reader accepts the same byte-order mark
    spec.write_bytes(b"\xef\xbb\xbf" + (REPO / "head_masks" / "organism.json").read_bytes())
    assert load_head_spec(spec).heads == _shipped_heads()


def test_truncated_png_names_its_row(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    rows = [{"id": "a", "image": "ok.png", "question": "q?", "answer": "x"},
            {"id": "b", "image": "cut.png", "question": "q?", "answer": "x"}]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ProbeDataError, match=r"line 2: image file unreadable: 'cut\.png'"):
        read_jsonl(p)
