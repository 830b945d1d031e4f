"""Tests for core_eval.probes: generators, JSONL reader, hashing, HF conversion, matching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_eval.probes.types import ProbeArgumentError
from PIL import Image

from core_eval.probes import (
    PROBE_FAMILIES, Box, ProbeDataError, ProbeSample, custom_dataset, exact_match, family_knobs,
    generate, load_probe, probe_set_hash, read_jsonl, relaxed_match, to_hf_dataset, write_jsonl,
)
from core_eval.probes.draw import BACKGROUND, GRID_LINE, PALETTE, render_text

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["grid_needle", "multi_image_needle", "text_lookup", "count_control"]
VARIANTS = [
    ("grid_needle", {}), ("grid_needle", {"grid": 7, "confusable": True, "image_size": 336}),
    ("multi_image_needle", {}), ("multi_image_needle", {"variant": "right_of", "n_images": 3}),
    ("multi_image_needle", {"objects_per_image": 9, "n_images": 2, "jitter": False}),
    ("text_lookup", {}), ("text_lookup", {"value_kind": "mixed", "n_rows": 12, "value_len": 6}),
    ("count_control", {}), ("count_control", {"count_by": "shape", "max_count": 8}),
]


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def crop(im, b: Box) -> np.ndarray:
    return arr(im)[int(b.y0):int(b.y1), int(b.x0):int(b.x1)]


def colour_mask(a: np.ndarray, rgb) -> np.ndarray:
    return np.all(a == np.array(rgb, dtype=a.dtype), axis=-1)


def fingerprint(samples):
    return [(s.id, s.question, s.answer, s.aliases, [b.to_dict() for b in s.boxes],
             [im.tobytes() for im in s.images]) for s in samples]


# ----------------------------------------------------------------------------- registry / determinism

def test_registry_has_the_four_families():
    assert set(FAMILIES) <= set(PROBE_FAMILIES)
    for f in FAMILIES:
        assert "image_size" in family_knobs(f)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_identical_different_seed_differs(family):
    a, b = generate(family, 4, seed=3), generate(family, 4, seed=3)
    assert fingerprint(a) == fingerprint(b)
    assert probe_set_hash(a) == probe_set_hash(b)
    c = generate(family, 4, seed=4)
    assert [s.images[0].tobytes() for s in a] != [s.images[0].tobytes() for s in c]
    # sample i does not depend on n
    assert fingerprint(generate(family, 2, seed=3)) == fingerprint(a[:2])
    # ids stable, unique, and knob-dependent
    assert len({s.id for s in a}) == len(a)
    assert a[0].id != generate(family, 1, seed=3, image_size=320)[0].id


def test_deterministic_across_processes():
    code = ("import json; from core_eval.probes import generate, probe_set_hash\n"
            f"print(json.dumps({{f: probe_set_hash(generate(f, 3, seed=11)) for f in {FAMILIES!r}}}))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs == {f: probe_set_hash(generate(f, 3, seed=11)) for f in FAMILIES}


def test_knob_validation():
    with pytest.raises(ProbeArgumentError, match="unknown knob"):
        generate("grid_needle", 1, gird=4)
    with pytest.raises(ProbeArgumentError, match="registered"):
        generate("nope", 1)
    with pytest.raises(ValueError, match="grid"):
        generate("grid_needle", 1, grid=1)
    with pytest.raises(ValueError, match="n_rows"):
        generate("text_lookup", 1, n_rows=40)
    with pytest.raises(ValueError, match="max_count"):
        generate("count_control", 1, min_count=4, max_count=2)
    with pytest.raises(ValueError, match="n_images"):
        generate("multi_image_needle", 1, n_images=1)


# ----------------------------------------------------------------------------- boxes and content

@pytest.mark.parametrize("family,knobs", VARIANTS)
def test_samples_well_formed_and_boxes_in_bounds(family, knobs):
    for s in generate(family, 6, seed=5, **knobs):
        assert s.family == family and s.question and s.answer
        assert "<image>" not in s.question
        assert all(im.mode == "RGB" for im in s.images)
        assert s.boxes, "generators always give target boxes (count >= 1 by default)"
        for b in s.boxes:
            w, h = s.images[b.image].size
            assert 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h
            assert all(isinstance(v, int) for v in b.as_list())
        json.dumps(s.to_record())  # JSON-able


@pytest.mark.parametrize("knobs", [{}, {"grid": 3}, {"grid": 8, "confusable": True}])
def test_grid_needle_box_holds_needle_and_meta_matches_pixels(knobs):
    for s in generate("grid_needle", 5, seed=9, **knobs):
        g = s.meta["knobs"]["grid"]
        colour, shape = s.meta["target"]
        assert s.answer == f"{colour} {shape}"
        assert s.meta["cells"].count(s.answer) == 1  # unique needle
        box = s.boxes[0]
        assert colour_mask(crop(s.images[0], box), PALETTE[colour]).sum() > 50
        # every cell's dominant colour is the colour recorded in meta
        a = arr(s.images[0])
        c = box.x1 - box.x0
        off = (s.images[0].width - c * g) // 2
        for idx, name in enumerate(s.meta["cells"]):
            r, col = divmod(idx, g)
            cell = a[off + r * c: off + (r + 1) * c, off + col * c: off + (col + 1) * c]
            counts = {n: colour_mask(cell, rgb).sum() for n, rgb in PALETTE.items()}
            assert max(counts, key=counts.get) == name.split()[0]
        tr, tc = s.meta["cell"]
        assert box.as_list() == [off + tc * c, off + tr * c, off + (tc + 1) * c, off + (tr + 1) * c]
        assert f"row {tr + 1}, column {tc + 1}" in s.question


def test_grid_knobs_change_difficulty():
    for g in (3, 6):
        s = generate("grid_needle", 1, seed=2, grid=g)[0]
        assert len(s.meta["cells"]) == g * g
        # vertical grid lines crossing the middle row of pixels: g + 1 runs of GRID_LINE
        row = colour_mask(arr(s.images[0]), GRID_LINE)[s.images[0].height // 2 + 3]
        runs = np.count_nonzero(np.diff(row.astype(int)) == 1) + int(row[0])
        assert runs == g + 1
    for k in (1, 3, 6):
        for s in generate("grid_needle", 3, seed=1, grid=5, n_distractor_types=k):
            assert len(set(s.meta["cells"]) - {s.answer}) == k
    for s in generate("grid_needle", 3, seed=1, grid=5, n_distractor_types=3, confusable=True):
        tc, ts = s.meta["target"]
        for name in set(s.meta["cells"]) - {s.answer}:
            c, sh = name.split()
            assert c == tc or sh == ts


@pytest.mark.parametrize("variant", ["which_image", "right_of"])
def test_multi_image_needle_unique_and_boxed(variant):
    for s in generate("multi_image_needle", 6, seed=4, variant=variant, n_images=3):
        target = " ".join(s.meta["target"])
        all_types = [o["type"] for objs in s.meta["objects"] for o in objs]
        assert all_types.count(target) == 1
        ni = s.meta["needle_image"]
        nb = s.boxes[0]
        assert nb.image == ni
        assert colour_mask(crop(s.images[ni], nb), PALETTE[s.meta["target"][0]]).sum() > 50
        if variant == "which_image":
            assert s.answer == str(ni + 1) and s.aliases == [f"image {ni + 1}"]
            assert len(s.boxes) == 1
        else:
            ab = s.boxes[1]
            assert ab.image == ni and ab.x0 > nb.x1 - 1  # to the right
            colour = s.answer.split()[0]
            assert colour_mask(crop(s.images[ni], ab), PALETTE[colour]).sum() > 50
            assert s.meta["box_roles"] == ["needle", "answer"]


def test_multi_image_knobs():
    s = generate("multi_image_needle", 1, seed=0, n_images=5, objects_per_image=6, image_size=256)[0]
    assert len(s.images) == 5 and all(im.size == (256, 256) for im in s.images)
    assert all(len(objs) == 6 for objs in s.meta["objects"])


@pytest.mark.parametrize("knobs", [{}, {"font_scale": 3, "n_rows": 5, "image_size": 512},
                                   {"value_kind": "number", "value_len": 7}])
def test_text_lookup_box_contains_the_value_text(knobs):
    for s in generate("text_lookup", 4, seed=6, **knobs):
        scale = s.meta["knobs"]["font_scale"]
        keys = [r["key"] for r in s.meta["rows"]]
        values = [r["value"] for r in s.meta["rows"]]
        assert len(set(keys)) == len(keys) and len(set(values)) == len(values)
        key = s.meta["key"]
        assert s.question.count(key) == 1 and values[keys.index(key)] == s.answer
        if knobs.get("value_kind") == "number":
            assert s.answer.isdigit() and len(s.answer) == 7
        box = s.boxes[0]
        patch = crop(s.images[0], box)
        assert (patch != np.array(BACKGROUND, dtype=np.uint8)).any()
        # the box shows exactly the value rendered alone in the same font
        np.testing.assert_array_equal(patch, arr(render_text(s.answer, scale)))
        # and the box holds all ink of the value: nothing dark just right of it in that row
        a = arr(s.images[0])
        right = a[int(box.y0):int(box.y1), int(box.x1):]
        assert (right == 255).all()


@pytest.mark.parametrize("knobs", [
    {"layout": "table", "n_rows": 16, "value_kind": "number", "value_len": 1},
    {"layout": "table", "n_rows": 7, "value_kind": "code", "value_len": 3, "image_size": 600},
])
def test_text_lookup_table_layout(knobs):
    """Table layout: each entry in its own cell as key letter + value, box = the value's glyphs
    (the value rendered alone at the cell's scale), the key's glyph just left of it."""
    from core_eval.probes import KEY_LETTERS

    for s in generate("text_lookup", 4, seed=6, **knobs):
        rows, g = s.meta["rows"], s.meta["grid"]
        assert len(rows) == knobs["n_rows"] and g * g >= len(rows) > (g - 1) ** 2
        keys, values = [r["key"] for r in rows], [r["value"] for r in rows]
        assert len(set(keys)) == len(keys) and set(keys) <= set(KEY_LETTERS)
        if knobs["value_len"] > 1:  # distinct when enough values exist (not 16 one-digit ones)
            assert len(set(values)) == len(values)
        assert all(len(v) == knobs["value_len"] for v in values)
        assert values[keys.index(s.meta["key"])] == s.answer
        assert f"value of {s.meta['key']}?" in s.question
        a = arr(s.images[0])
        cell = s.images[0].width // g
        cells = [r_ * g + c_ for r_, c_ in (r["cell"] for r in rows)]
        assert cells == sorted(set(cells)) and all(0 <= c < g * g for c in cells)
        for r in rows:
            x0, y0, x1, y1 = r["value_box"]
            sc = (y1 - y0) // 11  # the bitmap font's line height is 11 px
            np.testing.assert_array_equal(a[y0:y1, x0:x1], arr(render_text(r["value"], sc)))
            kx0 = x0 - 6 * sc  # one glyph to the left: the key letter
            if r["value"][0].isdigit():  # (some letter glyphs overhang into the previous one)
                np.testing.assert_array_equal(a[y0:y1, kx0:x0], arr(render_text(r["key"], sc)))
            cy, cx = r["cell"]
            assert cx * cell <= kx0 and x1 <= (cx + 1) * cell and cy * cell <= y0 and y1 <= (cy + 1) * cell
        b = s.boxes[0]
        assert [b.x0, b.y0, b.x1, b.y1] == rows[s.meta["row"]]["value_box"]


def test_text_lookup_table_side_keeps_the_cell_size():
    """``table_side`` fixes the table (so the cell size) whatever the number of entries."""
    for n in (3, 16):
        s = generate("text_lookup", 1, seed=1, layout="table", n_rows=n, table_side=4,
                     value_kind="number", value_len=1)[0]
        a = arr(s.images[0])
        grey = colour_mask(a, GRID_LINE)
        assert s.meta["grid"] == 4 and len(s.meta["rows"]) == n
        for j in range(1, 4):  # table lines at every quarter
            assert grey[:, 112 * j - 1].mean() > 0.9 and grey[112 * j - 1, :].mean() > 0.9
        inked = {(y // 112, x // 112) for y, x in np.argwhere((a < 100).all(-1))}
        assert inked == {tuple(r["cell"]) for r in s.meta["rows"]}
    with pytest.raises(ValueError, match="table_side"):
        generate("text_lookup", 1, layout="table", n_rows=10, table_side=3)


def test_text_lookup_table_repeats_values_only_when_it_must():
    s = generate("text_lookup", 1, seed=0, layout="table", n_rows=16, value_kind="number", value_len=1)[0]
    values = [r["value"] for r in s.meta["rows"]]
    assert len(values) == 16 and set(values) <= set("123456789")  # 9 one-digit values for 16 keys
    with pytest.raises(ValueError, match="table cells too small"):
        generate("text_lookup", 1, layout="table", n_rows=16, value_len=12, image_size=128)
    with pytest.raises(ValueError, match="layout"):
        generate("text_lookup", 1, layout="grid")


def test_text_lookup_rows_knob_changes_line_count():
    for n in (3, 10):
        s = generate("text_lookup", 1, seed=0, n_rows=n)[0]
        ink = (arr(s.images[0]) < 128).any(axis=(1, 2))
        bands = np.count_nonzero(np.diff(ink.astype(int)) == 1) + int(ink[0])
        assert bands == n + 2  # title + rule line + n rows
        assert len(s.meta["rows"]) == n


@pytest.mark.parametrize("count_by", ["colour", "shape"])
def test_count_control_boxes_are_all_targets(count_by):
    seen = set()
    for s in generate("count_control", 12, seed=8, count_by=count_by, max_count=6, n_distractors=5):
        assert s.answer.isdigit() and int(s.answer) == len(s.boxes) == s.meta["count"]
        seen.add(s.answer)
        assert 1 <= int(s.answer) <= 6
        targets = [o for o in s.meta["objects"] if o["target"]]
        assert [b.as_list() for b in s.boxes] == [o["box"] for o in targets]
        assert len(s.meta["objects"]) == int(s.answer) + 5
        if count_by == "colour":
            m = colour_mask(arr(s.images[0]), PALETTE[s.meta["target"]])
            inside = np.zeros_like(m)
            for b in s.boxes:
                assert m[b.y0:b.y1, b.x0:b.x1].sum() > 30
                inside[b.y0:b.y1, b.x0:b.x1] = True
            assert not (m & ~inside).any()  # no target-colour pixel outside the target boxes
        else:
            assert all(o["type"].split()[1] == s.meta["target"] for o in targets)
            assert all(o["type"].split()[1] != s.meta["target"]
                       for o in s.meta["objects"] if not o["target"])
    assert len(seen) > 2


def test_count_zero_means_whole_image():
    s = generate("count_control", 1, seed=0, min_count=0, max_count=0)[0]
    assert s.answer == "0" and s.boxes == []
    assert s.target_boxes() == [Box(0, 0, 0, *s.images[0].size)]


# ----------------------------------------------------------------------------- hashing

def test_probe_set_hash_stable_and_sensitive():
    s = generate("grid_needle", 3, seed=1)
    h = probe_set_hash(s)
    assert len(h) == 64 and h == probe_set_hash(generate("grid_needle", 3, seed=1))
    assert probe_set_hash(s[::-1]) != h
    assert probe_set_hash(s[:2]) != h

    def changed(**kw):
        t = generate("grid_needle", 3, seed=1)
        for k, v in kw.items():
            setattr(t[1], k, v)
        return probe_set_hash(t)

    assert changed(answer="blue circle") != h
    assert changed(question="?") != h
    assert changed(boxes=[Box(0, 0, 0, 10, 10)]) != h
    assert changed(meta={}) != h
    t = generate("grid_needle", 3, seed=1)
    im = t[2].images[0].copy()
    x, y = im.width // 2, im.height // 2
    im.putpixel((x, y), (1, 2, 3))
    t[2].images = [im]
    assert probe_set_hash(t) != h


# ----------------------------------------------------------------------------- JSONL

def _png(path: Path, size=(64, 48), colour=(10, 200, 30)):
    Image.new("RGB", size, colour).save(path)
    return path.name


def _write(path: Path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_read_jsonl_good_rows(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", size=(30, 20))
    sub = tmp_path / "imgs"
    sub.mkdir()
    _png(sub / "c.png", size=(16, 16))
    rows = [
        {"id": "r1", "image": "a.png", "question": "Q1?", "answer": "red", "aliases": ["rouge"],
         "boxes": [[0, 0, 64, 48], [10.5, 5, 20, 9]]},
        {"images": ["a.png", "b.png"], "question": "Q2?", "answer": 3,
         "boxes": [{"image": 1, "box": [1, 2, 30, 20]}], "source": "x"},
        "",
        {"image": "imgs/c.png", "question": "Q3?", "answer": "n/a"},
    ]
    samples = read_jsonl(_write(tmp_path / "data.jsonl", rows))
    assert [s.id for s in samples] == ["r1", "data:2", "data:4"]
    s1, s2, s3 = samples
    assert s1.boxes == [Box(0, 0, 0, 64, 48), Box(0, 10.5, 5, 20, 9)] and s1.aliases == ["rouge"]
    assert s2.answer == "3" and s2.boxes == [Box(1, 1, 2, 30, 20)] and s2.meta == {"extra": {"source": "x"}}
    assert s2.image_sizes == [(64, 48), (30, 20)]
    im = s2.images[1]
    assert im.mode == "RGB" and im.size == (30, 20)
    assert s3.boxes == [] and s3.target_boxes() == [Box(0, 0, 0, 16, 16)]
    assert s3.family == "jsonl"

    # image_root overrides the JSONL folder
    other = tmp_path / "elsewhere"
    other.mkdir()
    _write(other / "d.jsonl", [{"image": "c.png", "question": "q", "answer": "a"}])
    assert read_jsonl(other / "d.jsonl", image_root=sub)[0].image_sizes == [(16, 16)]
    with pytest.raises(ProbeDataError, match="not found"):
        read_jsonl(other / "d.jsonl")


BAD_ROWS = [
    ('{"image": "a.png", "question": "q", "answer": "a",', "malformed JSON"),
    ({"image": "a.png", "answer": "a"}, "missing field 'question'"),
    ({"image": "a.png", "question": "q"}, "missing field 'answer'"),
    ({"question": "q", "answer": "a"}, "missing field 'image' or 'images'"),
    ({"image": "missing.png", "question": "q", "answer": "a"}, "image file not found"),
    ({"image": "junk.png", "question": "q", "answer": "a"}, "image file unreadable"),
    ({"image": "a.png", "question": "q", "answer": "a", "boxes": [[1, 2, 3]]}, "4 numbers"),
    ({"image": "a.png", "question": "q", "answer": "a", "boxes": [[1, 2, "3", 4]]}, "4 numbers"),
    ({"image": "a.png", "question": "q", "answer": "a", "boxes": [[10, 2, 10, 4]]}, "x1 (10) <= x0 (10)"),
    ({"image": "a.png", "question": "q", "answer": "a", "boxes": [[1, 9, 5, 4]]}, "y1 (4) <= y0 (9)"),
    ({"image": "a.png", "question": "q", "answer": "a", "boxes": [[0, 0, 65, 10]]},
     "outside the image bounds (image size 64x48)"),
    ({"image": "a.png", "question": "q", "answer": "a", "boxes": [[-1, 0, 5, 10]]}, "image size 64x48"),
    ({"images": ["a.png", "a.png"], "question": "q", "answer": "a",
      "boxes": [{"image": 2, "box": [0, 0, 5, 5]}]}, "image index 2 out of range"),
    ({"images": ["a.png", "a.png"], "question": "q", "answer": "a", "boxes": [[0, 0, 5, 5]]}, "ambiguous"),
    ("[1, 2]", "expected a JSON object"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_read_jsonl_rejects_each_bad_case_with_line_number(tmp_path, row, reason):
    _png(tmp_path / "a.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    good = {"image": "a.png", "question": "q", "answer": "a", "boxes": [[0, 0, 64, 48]]}
    path = _write(tmp_path / "d.jsonl", [good, good | {"id": "x"}, row])
    with pytest.raises(ProbeDataError) as ei:
        read_jsonl(path)
    msg = str(ei.value)
    assert "line 3:" in msg and reason in msg, msg
    assert "line 1:" not in msg and "line 2:" not in msg
    assert [ln for ln, _ in ei.value.errors] == [3] * len(ei.value.errors)
    assert isinstance(ei.value, ValueError)


def test_read_jsonl_collects_all_errors(tmp_path):
    _png(tmp_path / "a.png")
    good = {"image": "a.png", "question": "q", "answer": "a"}
    rows = [good, "{bad", good, {"image": "nope.png", "question": "q", "answer": "a"}, good | {"id": "a"},
            good | {"id": "a"}, good | {"boxes": [[0, 0, 100, 10]]}]
    with pytest.raises(ProbeDataError) as ei:
        read_jsonl(_write(tmp_path / "d.jsonl", rows))
    lines = sorted({ln for ln, _ in ei.value.errors})
    assert lines == [2, 4, 6, 7]
    assert "4 invalid row(s)" in str(ei.value) and "duplicate id 'a' (first at line 5)" in str(ei.value)


def test_read_jsonl_empty_file(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    with pytest.raises(ProbeDataError, match="no samples"):
        read_jsonl(p)


def test_write_read_roundtrip_preserves_hash(tmp_path):
    samples = generate("multi_image_needle", 3, seed=2) + generate("text_lookup", 2, seed=2)
    path = write_jsonl(samples, tmp_path / "out" / "set.jsonl")
    back = read_jsonl(path)
    assert probe_set_hash(back) == probe_set_hash(samples)
    assert [s.boxes for s in back] == [s.boxes for s in samples]


# ----------------------------------------------------------------------------- HF datasets / loader

def test_to_hf_dataset_columns_and_types():
    import datasets

    samples = generate("multi_image_needle", 3, seed=1, n_images=2) + generate("grid_needle", 2, seed=1)
    ds = to_hf_dataset(samples)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 5
    assert {"id", "question", "answer", "aliases", "images", "image", "boxes", "family",
            "meta"} <= set(ds.column_names)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and len(row["images"]) == 2
    assert all(isinstance(im, Image.Image) for im in row["images"])
    assert np.array_equal(arr(row["images"][1]), arr(samples[0].images[1]))
    assert json.loads(row["boxes"]) == [b.to_dict() for b in samples[0].boxes]
    assert json.loads(ds[3]["meta"])["knobs"]["grid"] == 4
    assert ds[3]["family"] == "grid_needle" and ds[0]["aliases"] == samples[0].aliases


def test_load_probe_and_custom_dataset(tmp_path):
    assert fingerprint(load_probe("count_control", n=2, seed=3, max_count=3)) == \
        fingerprint(generate("count_control", 2, seed=3, max_count=3))
    assert len(load_probe("grid_needle")) == 100
    p = write_jsonl(generate("grid_needle", 3, seed=0), tmp_path / "g.jsonl")
    assert len(load_probe(str(p))) == 3 and len(load_probe(p, n=2)) == 2
    with pytest.raises(ProbeArgumentError):
        load_probe(p, grid=3)
    with pytest.raises(ProbeArgumentError, match="neither"):
        load_probe("not_a_family")
    dd = custom_dataset(probe="text_lookup", n=2, seed=1, knobs={"n_rows": 4},
                        pretrained="ignored/model", dtype="bfloat16")
    assert list(dd) == ["test"] and len(dd["test"]) == 2
    assert dd["test"][0]["answer"] == generate("text_lookup", 1, seed=1, n_rows=4)[0].answer


# ----------------------------------------------------------------------------- matching

def test_exact_match():
    assert exact_match("Red Circle.", "red circle")
    assert exact_match("  red   circle ", "red circle")
    assert exact_match("Image-2", "2", ["image 2"])
    assert exact_match("3.5", "3.5") and not exact_match("35", "3.5")
    assert exact_match("1,000", "1000")
    assert exact_match("K7Q2", "k7q2")
    assert not exact_match("a red circle", "red circle")
    assert not exact_match("red square", "red circle")
    assert not exact_match("", "red circle") and not exact_match(None, "x")
    assert not exact_match("-3", "3")


def test_relaxed_match():
    assert relaxed_match("The answer is a red circle.", "red circle")
    assert not relaxed_match("a red circles", "red circle")
    assert not relaxed_match("red", "red circle")
    assert not relaxed_match("K7Q23", "K7Q2")
    assert relaxed_match("There are three red shapes", "3")
    assert relaxed_match("3.0", "3") and relaxed_match("It is 3", "3")
    assert not relaxed_match("There are 4", "3")
    assert relaxed_match("It is in image 2", "2", ["image 2"])
    assert not relaxed_match("", "3") and not relaxed_match("anything", "")
    assert relaxed_match("value: k7q2", "K7Q2")


def test_generated_answers_match_themselves():
    for f in FAMILIES:
        for s in generate(f, 5, seed=0):
            assert exact_match(s.answer, s.answer, s.aliases)
            for a in s.aliases:
                assert exact_match(a, s.answer, s.aliases)
            assert relaxed_match(f"Answer: {s.answer}", s.answer)


def test_probe_sample_rejects_bad_box_index():
    im = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="out of range"):
        ProbeSample("x", [im], "q", "a", boxes=[Box(1, 0, 0, 4, 4)])
