"""Tests for core_eval.spec: the core-head-spec/v1 format, legacy readers, selection and KV mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_eval.adapters.base import ModelShape
from core_eval.spec import (
    SCHEMA,
    HeadSpec,
    HeadSpecError,
    heads_by_layer,
    kv_to_query_heads,
    load_head_spec,
    select_heads,
    spec_from_scores,
    to_kv_heads,
)

SHAPE = ModelShape(num_layers=4, num_heads=8, num_kv_heads=2, head_dim=16)  # GQA, groups = 4


def _scores(seed: int = 0, shape: ModelShape = SHAPE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    L, H = shape.num_layers, shape.num_heads
    return {
        "ram": rng.random((L, H)),
        "lift": rng.random((L, H)) * 5,
        "visual_mass": rng.random((L, H)),
        "std": rng.random((L, H)) * 0.1,
        "n": np.full((L, H), 32.0),
    }


def _model_info(shape: ModelShape = SHAPE) -> dict:
    return {"name": "toy/vlm", "revision": "abc123", "architecture": "LlavaForConditionalGeneration",
            **shape.as_dict()}


SCORER = {"name": "ram-v1", "probe_set": "toy-probes", "probe_hash": "deadbeef", "n_samples": 32,
          "query_rows": "answer_teacher_forced", "dtype": "bfloat16", "seed": 0, "attn_backend": "sdpa",
          "package_version": "0.1.0"}


@pytest.fixture
def spec() -> HeadSpec:
    return spec_from_scores(_scores(), _model_info(), SCORER, frac=0.25)


def _write_dict(tmp_path: Path, d, name="spec.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


# --------------------------------------------------------------------------- format: round trip


def test_round_trip_write_read_equal(tmp_path, spec):
    p = spec.write(tmp_path / "sub" / "spec.json")
    back = HeadSpec.read(p)
    assert back == spec
    assert back.content_hash() == spec.content_hash()
    assert back.heads == spec.heads and len(back.heads) == 8  # round(0.25 * 32)
    for name in spec.scores:
        np.testing.assert_array_equal(back.score(name), spec.score(name))  # bit-exact floats
    assert back.model == spec.model and back.scorer == SCORER
    assert back.shape == SHAPE
    assert back.rule == {"rule": "top", "frac": 0.25, "score": "ram", "tiebreak": "lift"}
    # the readable view is written and agrees with the heads
    raw = json.loads(p.read_text())
    assert raw["schema"] == SCHEMA
    assert raw["selection"]["by_layer"] == {f"layer_{l}": hs for l, hs in heads_by_layer(spec.heads).items()}
    assert raw["scores"]["ram"][1][2] == spec.score("ram")[1, 2]


def test_atomic_write_leaves_no_temp_files(tmp_path, spec, monkeypatch):
    p = spec.write(tmp_path / "spec.json")
    spec.with_selection("bottom", k=3).write(p)  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["spec.json"]
    assert len(HeadSpec.read(p).heads) == 3
    mask = os.umask(0o022)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # a normal file's mode, not mkstemp's 0600
    # a failure at the rename step leaves the old file intact and no temp file behind
    before = p.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        spec.write(p)
    assert sorted(os.listdir(tmp_path)) == ["spec.json"]
    assert p.read_text() == before


def test_content_hash_stable_and_sensitive(spec):
    h = spec.content_hash()
    assert len(h) == 16 and int(h, 16) >= 0
    assert HeadSpec.from_json(spec.to_json()).content_hash() == h
    assert spec.with_selection("top", frac=0.25).content_hash() == h
    assert spec.with_selection("top", k=3).content_hash() != h


def test_score_default_and_readonly(spec):
    np.testing.assert_array_equal(spec.score(), _scores()["ram"])
    with pytest.raises(ValueError):
        spec.score()[0, 0] = 1.0
    with pytest.raises(HeadSpecError, match="no score array 'nope'"):
        spec.score("nope")


def test_extra_score_arrays_allowed(tmp_path):
    sc = _scores()
    sc["causal_effect"] = np.linspace(-1, 1, 32).reshape(4, 8)
    s = spec_from_scores(sc, _model_info(), SCORER, k=2, extra={"note": "x"})
    back = HeadSpec.read(s.write(tmp_path / "a.json"))
    np.testing.assert_array_equal(back.score("causal_effect"), sc["causal_effect"])
    assert back.extra == {"note": "x"}


def test_import_is_light():
    code = "import sys, core_eval.spec; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- format: errors


def _err(path) -> str:
    with pytest.raises(HeadSpecError) as ei:
        HeadSpec.read(path)
    return str(ei.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.json"
    p.write_text("  \n")
    msg = _err(p)
    assert str(p) in msg and "empty" in msg and "Fix:" in msg
    with pytest.raises(HeadSpecError, match="empty"):
        load_head_spec(p)


def test_malformed_json_names_line_and_column(tmp_path, spec):
    text = spec.to_json().replace('"kv_policy": "any"', '"kv_policy": "any",,')
    p = tmp_path / "bad.json"
    p.write_text(text)
    lineno = next(i for i, line in enumerate(text.splitlines(), 1) if ",," in line)
    msg = _err(p)
    assert str(p) in msg and "malformed JSON" in msg and f"line {lineno}" in msg and "column" in msg
    with pytest.raises(HeadSpecError, match=f"line {lineno}"):
        load_head_spec(p)


def test_unknown_schema(tmp_path, spec):
    d = spec.to_dict()
    d["schema"] = "core-head-spec/v9"
    msg = _err(_write_dict(tmp_path, d))
    assert "core-head-spec/v9" in msg and SCHEMA in msg


def test_missing_fields(tmp_path, spec):
    d = spec.to_dict()
    del d["selection"], d["kv_policy"]
    msg = _err(_write_dict(tmp_path, d))
    assert "'selection'" in msg and "'kv_policy'" in msg and "missing" in msg
    d = spec.to_dict()
    del d["model"]["num_kv_heads"]
    assert "num_kv_heads" in _err(_write_dict(tmp_path, d))
    d = spec.to_dict()
    del d["schema"]
    assert "schema" in _err(_write_dict(tmp_path, d))
    d = spec.to_dict()
    d["kv_polcy"] = "any"
    assert "kv_polcy" in _err(_write_dict(tmp_path, d))


def test_wrong_shape_scores(tmp_path, spec):
    d = spec.to_dict()
    d["scores"]["lift"] = d["scores"]["lift"][:3]  # 3 layers instead of 4
    msg = _err(_write_dict(tmp_path, d))
    assert "scores.lift" in msg and "3 rows" in msg and "num_layers=4" in msg
    d = spec.to_dict()
    d["scores"]["ram"][2] = d["scores"]["ram"][2][:7]
    msg = _err(_write_dict(tmp_path, d))
    assert "scores.ram[2]" in msg and "7 values" in msg and "num_heads=8" in msg
    d = spec.to_dict()
    d["scores"]["ram"][0][1] = "high"
    assert "scores.ram[0][1]" in _err(_write_dict(tmp_path, d))


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_nonfinite_scores(tmp_path, spec, bad):
    text = spec.to_json()
    d = json.loads(text)
    row = d["scores"]["visual_mass"][1]
    text = text.replace(json.dumps(row), json.dumps(row).replace(repr(row[5]), bad, 1), 1)
    p = tmp_path / "nan.json"
    p.write_text(text)
    msg = _err(p)
    assert "scores.visual_mass[1][5]" in msg and "finite" in msg


def test_nan_rejected_when_building():
    sc = _scores()
    sc["ram"][3, 2] = np.nan
    with pytest.raises(HeadSpecError, match=r"scores.ram\[3\]\[2\] is nan"):
        spec_from_scores(sc, _model_info(), SCORER)


@pytest.mark.parametrize("head,detail", [([4, 0], "layer 4 is out of range"), ([0, 8], "head 8 is out of range"),
                                         ([-1, 0], "layer -1 is out of range")])
def test_selected_head_out_of_range(tmp_path, spec, head, detail):
    d = spec.with_selection(heads=[[0, 1]]).to_dict()
    d["selection"]["heads"].append(head)
    del d["selection"]["by_layer"]
    msg = _err(_write_dict(tmp_path, d))
    assert detail in msg and str(tmp_path) in msg


def test_duplicate_heads(tmp_path, spec):
    d = spec.with_selection(heads=[[0, 1], [2, 3]]).to_dict()
    d["selection"]["heads"].append([2, 3])
    del d["selection"]["by_layer"]
    assert "[2, 3] is a duplicate" in _err(_write_dict(tmp_path, d))


def test_bad_kv_policy(tmp_path, spec):
    d = spec.to_dict()
    d["kv_policy"] = "some"
    msg = _err(_write_dict(tmp_path, d))
    assert "'some'" in msg and "any" in msg and "mean" in msg


def test_edited_heads_must_be_marked_manual(tmp_path, spec):
    d = spec.to_dict()
    d["selection"]["heads"] = d["selection"]["heads"][:-1]
    del d["selection"]["by_layer"]
    msg = _err(_write_dict(tmp_path, d))
    assert "manual" in msg and "top(frac=0.25)" in msg
    d["selection"] = {"rule": "manual", "heads": d["selection"]["heads"]}
    assert len(HeadSpec.read(_write_dict(tmp_path, d)).heads) == 7
    # by_layer that disagrees with heads
    d = spec.to_dict()
    d["selection"]["by_layer"]["layer_99"] = [0]
    assert "by_layer disagrees" in _err(_write_dict(tmp_path, d))


def test_design_example_rule_key_gets_a_clear_error(tmp_path, spec):
    d = spec.to_dict()
    d["selection"] = {"top_frac": 0.05, "heads": d["selection"]["heads"]}
    msg = _err(_write_dict(tmp_path, d))
    assert "top_frac" in msg and '"rule": "top"' in msg


def test_check_shape_names_both_shapes(spec):
    spec.check_shape(SHAPE)  # no error
    other = ModelShape(num_layers=28, num_heads=8, num_kv_heads=4, head_dim=16)
    with pytest.raises(HeadSpecError) as ei:
        spec.check_shape(other)
    msg = str(ei.value)
    assert "num_layers=4" in msg and "num_kv_heads=2" in msg  # the spec's shape
    assert "num_layers=28" in msg and "num_kv_heads=4" in msg  # the model's shape
    assert "differs in num_layers, num_kv_heads" in msg


def test_load_head_spec_v1_checks_shape(tmp_path, spec):
    p = spec.write(tmp_path / "s.json")
    assert load_head_spec(p, shape=SHAPE) == spec
    with pytest.raises(HeadSpecError, match="num_layers=5"):
        load_head_spec(p, shape=ModelShape(5, 8, 2, 16))


def test_in_memory_invalid_spec_rejected(spec):
    with pytest.raises(HeadSpecError, match="<head spec>.*model.num_heads=8 is not a multiple of num_kv_heads=3"):
        HeadSpec(SCHEMA, {**spec.model, "num_kv_heads": 3}, {}, {}, {"rule": "none", "heads": []})


# --------------------------------------------------------------------------- legacy: Retrieval Head


def _rh_file(tmp_path, L=2, H=4, name="llama-toy.json", drop=()):
    d = {}
    for l in range(L):
        for h in range(H):
            if (l, h) not in drop:
                d[f"{l}-{h}"] = [0.1 * (l * H + h), 0.1 * (l * H + h) + 0.2]
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_retrieval_head_inferred_shape(tmp_path):
    p = _rh_file(tmp_path)
    s = load_head_spec(p)
    assert s.model["num_layers"] == 2 and s.model["num_heads"] == 4
    assert s.model["num_kv_heads"] is None and s.model["name"] == "llama-toy"
    assert s.scorer["legacy_format"] == "retrieval_head_json" and "inferred" in s.scorer["shape_source"]
    np.testing.assert_allclose(s.score("retrieval_score")[1, 2], 0.1 * 6 + 0.1)
    np.testing.assert_allclose(s.score("std")[1, 2], 0.1)
    assert s.score("n")[0, 0] == 2
    assert s.heads == [(1, 3)]  # top 5% of 8 heads -> 1: the largest mean
    with pytest.raises(HeadSpecError, match="num_kv_heads"):
        s.shape
    # converted spec round-trips as v1 and records its origin
    back = load_head_spec(s.write(tmp_path / "conv.json"))
    assert back == s and back.scorer["source_sha256"]
    # a mismatch with the real model names both shapes and suggests passing shape=
    with pytest.raises(HeadSpecError, match=r"num_layers=2.*num_layers=32.*shape=") as ei:
        s.check_shape(ModelShape(32, 32, 8, 128))
    assert "reload" in str(ei.value)


def test_retrieval_head_with_gqa_shape(tmp_path):
    p = _rh_file(tmp_path, L=4, H=8)
    s = load_head_spec(p, shape=SHAPE, model_info={"name": "toy"})
    assert s.shape == SHAPE and s.model["name"] == "toy"
    assert s.score("n")[3, 7] == 2 and s.scorer["n_heads_in_file"] == 32
    assert s.heads == [(3, 6), (3, 7)]  # round(0.05 * 32) = 2 highest means
    assert s.kv_heads() == [(3, 1)]  # heads 6, 7 read KV head 1 (groups = 4)
    # a head missing from the file is an error, not a score of 0 (tests/test_reliability.py)


def test_retrieval_head_out_of_range_with_shape(tmp_path):
    p = _rh_file(tmp_path, L=5, H=8)
    with pytest.raises(HeadSpecError, match=r"head '4-0' is out of range.*num_layers=4"):
        load_head_spec(p, shape=SHAPE)


def test_retrieval_head_bad_values(tmp_path):
    p = _write_dict(tmp_path, {"0-0": [0.1], "0-1": ["x"]}, "rh.json")
    with pytest.raises(HeadSpecError, match="'0-1'"):
        load_head_spec(p)
    p = _write_dict(tmp_path, {"0-0": [0.1], "zero-one": [0.2]}, "rh2.json")
    with pytest.raises(HeadSpecError, match="unrecognised JSON"):
        load_head_spec(p)


# --------------------------------------------------------------------------- legacy: DuoAttention


DUO = "1.0\t0.2\n0.7\t0.4\n0.0\t0.9\n0.3\t1.2\n"  # 4 layers x 2 KV heads (last value clipped to 1)


def test_duoattention_gqa_expansion(tmp_path):
    p = tmp_path / "full_attention_heads.tsv"
    p.write_text(DUO)
    s = load_head_spec(p, shape=SHAPE)
    gate = s.score("duo_gate")
    assert gate.shape == (4, 8)
    np.testing.assert_array_equal(gate[0], [1.0] * 4 + [0.2] * 4)  # query h <- KV h // 4
    np.testing.assert_array_equal(gate[3], [0.3] * 4 + [1.0] * 4)
    assert s.scorer["legacy_format"] == "duoattention_tsv" and s.scorer["n_clipped_to_unit_interval"] == 1
    assert s.rule == {"rule": "threshold", "threshold": 0.5, "score": "duo_gate"}
    assert s.kv_heads() == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert to_kv_heads(s.heads, SHAPE, "all") == s.kv_heads()
    assert s.heads == kv_to_query_heads(s.kv_heads(), SHAPE)


def test_duoattention_directory_and_no_shape(tmp_path):
    d = tmp_path / "pattern"
    d.mkdir()
    (d / "full_attention_heads.tsv").write_text(DUO)
    (d / "config.json").write_text(json.dumps({"sink_size": 64, "recent_size": 256}))
    s = load_head_spec(d)
    assert (s.model["num_layers"], s.model["num_heads"], s.model["num_kv_heads"]) == (4, 2, 2)
    assert s.scorer["sink_size"] == 64 and s.scorer["recent_size"] == 256
    assert s.heads == [(0, 0), (1, 0), (2, 1), (3, 1)]
    with pytest.raises(HeadSpecError, match=r"num_heads=2.*num_heads=8"):
        s.check_shape(SHAPE)


def test_duoattention_errors(tmp_path):
    p = tmp_path / "full_attention_heads.tsv"
    p.write_text(DUO)
    with pytest.raises(HeadSpecError, match=r"4 rows.*x 2 columns.*num_layers=6"):
        load_head_spec(p, shape=ModelShape(6, 8, 2, 16))
    p.write_text("1.0\t0.2\n0.7\n")
    with pytest.raises(HeadSpecError, match="line 2 has 1 values"):
        load_head_spec(p)
    p.write_text("1.0\tabc\n")
    with pytest.raises(HeadSpecError, match="line 1, column 2: 'abc'"):
        load_head_spec(p)


# --------------------------------------------------------------------------- selection


KNOWN = np.array([[0.9, 0.1, 0.5, 0.3],
                  [0.2, 0.8, 0.4, 0.7],
                  [0.6, 0.05, 0.35, 0.0]])


def test_top_bottom_known_array():
    assert select_heads(KNOWN, "top", k=3) == [(0, 0), (1, 1), (1, 3)]
    assert select_heads(KNOWN, "bottom", k=3) == [(0, 1), (2, 1), (2, 3)]
    assert select_heads(KNOWN, "top", frac=0.25) == [(0, 0), (1, 1), (1, 3)]  # round(0.25 * 12) = 3
    assert select_heads(KNOWN, "top", frac=0.01) == [(0, 0)]  # minimum 1
    assert select_heads(KNOWN, "top", frac=1.0) == [(l, h) for l in range(3) for h in range(4)]
    assert select_heads(KNOWN, "top", k=0) == []
    assert select_heads(KNOWN, "none") == []


def test_frac_rounds_half_up():
    s = np.arange(50.0).reshape(5, 10)
    assert len(select_heads(s, "top", frac=0.05)) == 3  # 2.5 -> 3
    assert len(select_heads(s, "top", frac=0.03)) == 2  # 1.5 -> 2


def test_ties_broken_by_lift_then_index():
    s = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert select_heads(s, "top", k=2) == [(0, 0), (0, 1)]  # no tiebreak: index order
    lift = np.array([[0.1, 0.3, 9.0], [0.3, 0.2, 9.0]])
    assert select_heads(s, "top", k=1, tiebreak=lift) == [(0, 1)]  # lift 0.3 tie -> lower index
    assert select_heads(s, "top", k=2, tiebreak=lift) == [(0, 1), (1, 0)]
    assert select_heads(s, "top", k=3, tiebreak=lift) == [(0, 1), (1, 0), (1, 1)]
    # bottom among the four tied 1.0s is never reached; among the zeros the lower lift goes first
    z = np.array([[0.0, 0.0, 5.0], [0.0, 5.0, 5.0]])
    lz = np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert select_heads(z, "bottom", k=2, tiebreak=lz) == [(0, 1), (1, 0)]


def test_spec_uses_lift_as_tiebreak():
    sc = _scores()
    sc["ram"][:] = 0.5
    sc["lift"][:] = 0.0
    sc["lift"][2, 6] = 1.0
    s = spec_from_scores(sc, _model_info(), SCORER, k=2)
    assert s.heads == [(0, 0), (2, 6)]


def test_random_excludes_top_and_is_seeded():
    s = _scores(seed=3)["ram"]
    top = set(select_heads(s, "top", k=8))
    r0 = select_heads(s, "random", k=8, seed=0)
    assert len(r0) == 8 and not (set(r0) & top)
    assert select_heads(s, "random", k=8, seed=0) == r0
    others = [select_heads(s, "random", k=8, seed=i) for i in range(1, 4)]
    assert all(o != r0 for o in others)
    assert select_heads(s, "random", frac=0.25, seed=0) == r0
    with pytest.raises(HeadSpecError, match="at most half"):
        select_heads(s, "random", k=17)


def test_layer_matched_random_counts():
    s = _scores(seed=5)["ram"]
    s[0] += 10  # top set concentrated in layer 0 (8 heads there) -> fallback to top heads there
    top = select_heads(s, "top", k=10)
    top_counts = {l: len(h) for l, h in heads_by_layer(top).items()}
    for seed in range(3):
        lm = select_heads(s, "layer_matched_random", k=10, seed=seed)
        assert {l: len(h) for l, h in heads_by_layer(lm).items()} == top_counts
        outside0 = [x for x in lm if x[0] != 0]
        assert not (set(outside0) & set(top))  # excluded wherever the layer has room
    assert select_heads(s, "layer_matched_random", k=10, seed=1) != select_heads(s, "layer_matched_random", k=10,
                                                                                 seed=2)
    s2 = _scores(seed=6)["ram"]
    top2 = select_heads(s2, "top", k=6)
    lm2 = select_heads(s2, "layer_matched_random", k=6, seed=0)
    assert not (set(lm2) & set(top2))
    assert [len(v) for v in heads_by_layer(lm2).values()] == [len(v) for v in heads_by_layer(top2).values()]


def test_threshold_rule():
    assert select_heads(KNOWN, "threshold", threshold=0.7) == [(0, 0), (1, 1), (1, 3)]
    assert select_heads(KNOWN, "threshold", threshold=5.0) == []


@pytest.mark.parametrize("kwargs,detail", [
    (dict(rule="top", frac=0.0), "frac=0.0"),
    (dict(rule="top", frac=1.5), "frac=1.5"),
    (dict(rule="top", frac=float("nan")), "frac=nan"),
    (dict(rule="top", k=13), "k=13"),
    (dict(rule="top", k=-1), "k=-1"),
    (dict(rule="top", k=2.0), "k=2.0"),
    (dict(rule="top", frac=0.1, k=2), "both"),
    (dict(rule="top"), "neither"),
    (dict(rule="threshold"), "threshold"),
    (dict(rule="threshold", threshold=0.5, k=2), "not frac or k"),
    (dict(rule="top", k=2, threshold=0.5), "not threshold"),
    (dict(rule="random", k=2, seed=1.5), "seed"),
    (dict(rule="best", k=2), "unknown selection rule"),
])
def test_selection_argument_errors(kwargs, detail):
    rule = kwargs.pop("rule")
    with pytest.raises(HeadSpecError) as ei:
        select_heads(KNOWN, rule, **kwargs)
    assert detail in str(ei.value)


def test_selection_rejects_bad_scores():
    with pytest.raises(HeadSpecError, match="non-finite"):
        select_heads(np.array([[1.0, np.inf]]), "top", k=1)
    with pytest.raises(HeadSpecError, match="tiebreak has shape"):
        select_heads(KNOWN, "top", k=1, tiebreak=np.zeros((2, 2)))


def test_with_selection_controls_in_spec(tmp_path, spec):
    for rule in ("bottom", "random", "layer_matched_random"):
        ctrl = spec.with_selection(rule, frac=0.25, seed=7)
        assert len(ctrl.heads) == len(spec.heads)
        back = HeadSpec.read(ctrl.write(tmp_path / f"{rule}.json"))  # re-derived and checked on read
        assert back.heads == ctrl.heads and back.rule["rule"] == rule
    assert not set(spec.with_selection("random", frac=0.25, seed=7).heads) & set(spec.heads)
    assert spec.with_selection("none").heads == []
    manual = spec.with_selection(heads=[(3, 1), (0, 2)])
    assert manual.heads == [(0, 2), (3, 1)] and manual.rule["rule"] == "manual"


# --------------------------------------------------------------------------- KV heads


def test_kv_policies_gqa():
    heads = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 7), (2, 5), (2, 6)]
    assert to_kv_heads(heads, SHAPE, "any") == [(0, 0), (0, 1), (1, 1), (2, 1)]
    assert to_kv_heads(heads, SHAPE, "all") == [(0, 0)]
    scores = np.zeros((4, 8))
    scores[3, 4:] = 1.0  # KV (3,1) mean 1.0
    scores[1, :4] = 0.5  # KV (1,0) mean 0.5
    scores[2, 0] = 1.0   # KV (2,0) mean 0.25
    # mean: ceil(8 / 4) = 2 KV heads by mean query score, regardless of which heads were selected
    assert to_kv_heads(heads, SHAPE, "mean", scores=scores) == [(1, 0), (3, 1)]
    assert to_kv_heads(heads[:5], SHAPE, "mean", scores=scores) == [(1, 0), (3, 1)]  # ceil(5/4) = 2
    assert to_kv_heads(heads[:1], SHAPE, "mean", scores=scores) == [(3, 1)]
    assert to_kv_heads([], SHAPE, "mean", scores=scores) == []
    with pytest.raises(HeadSpecError, match="no scores"):
        to_kv_heads(heads, SHAPE, "mean")
    with pytest.raises(HeadSpecError, match="unknown kv_policy"):
        to_kv_heads(heads, SHAPE, "most")
    with pytest.raises(HeadSpecError, match="head 8 is out of range"):
        to_kv_heads([(0, 8)], SHAPE, "any")


def test_kv_policies_mha_identity():
    mha = ModelShape(2, 4, 4, 8)
    heads = [(0, 1), (1, 3)]
    assert to_kv_heads(heads, mha, "any") == heads == to_kv_heads(heads, mha, "all")


def test_spec_kv_heads_uses_policy(spec):
    mean_spec = spec.with_selection("top", frac=0.25, kv_policy="mean")
    assert len(mean_spec.kv_heads()) == 2  # 8 heads / groups 4
    assert mean_spec.kv_heads() == to_kv_heads(spec.heads, SHAPE, "mean", scores=spec.score("ram"))
    assert spec.kv_heads() == to_kv_heads(spec.heads, SHAPE, "any")
    with pytest.raises(HeadSpecError, match="differs in num_layers"):
        spec.kv_heads(ModelShape(5, 8, 2, 16))


def test_heads_by_layer():
    assert heads_by_layer([(2, 5), (0, 3), (2, 1)]) == {0: [3], 2: [1, 5]}
    assert list(heads_by_layer([(10, 0), (2, 0)])) == [2, 10]
    assert heads_by_layer([]) == {}
