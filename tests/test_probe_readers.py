"""Readers of real grounding data (``core_eval.probes.readers``, JSONL documents, ``doc_needle``).

Every reader runs on small data the tests write in the real published schema
(``probe_data_fixtures.py``). Oracles: boxes by hand from the published [x, y, w, h]; pixels
against PIL's own decode of the written bytes; the ``core`` schema round trip against
:func:`probe_set_hash` of the generated set; ``doc_needle`` glyphs against the font rendered alone.
"""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
from PIL import Image

import probe_data_fixtures as F
from core_eval.cli import main as cli_main
from core_eval.probes import (
    Box, ProbeArgumentError, ProbeDataError, generate, load_probe, probe_set_hash, read_jsonl, to_hf_dataset,
)
from core_eval.probes.draw import render_text
from core_eval.probes.readers import refcoco as R
from core_eval.probes.readers.boxes import EDGE_TOLERANCE, parse_box
from core_eval.probes.readers.images import EncodedImages


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def xywh(b):
    x, y, w, h = b
    return (x, y, x + w, y + h)


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("raw,fmt,reason", [
    ([1, 2, 3], "xyxy", "4 numbers [x0, y0, x1, y1]"),
    ([1, 2, 3, 4, 5], "xywh", "4 numbers [x, y, width, height]"),
    ([1, 2, "3", 4], "xyxy", "4 numbers"),
    ([1, 2, True, 4], "xyxy", "4 numbers"),
    ("1,2,3,4", "xyxy", "4 numbers"),
    ([1, 2, float("nan"), 4], "xywh", "NaN or infinity"),
    ([1, 2, float("inf"), 4], "xyxy", "NaN or infinity"),
    ([1, 2, -3, 4], "xywh", "width (-3) <= 0"),
    ([1, 2, 3, 0], "xywh", "height (0) <= 0"),
    ([5, 2, 5, 4], "xyxy", "x1 (5) <= x0 (5)"),
    ([10, 10, 5, 5], "xyxy", "set \"bbox_format\": \"xywh\""),  # a [x, y, w, h] box read as corners
    ([60, 0, 10, 10], "xywh", "outside the image bounds (image size 64x48)"),
    ([0, 0, 65, 10], "xyxy", "outside the image bounds"),
    ([-1, 0, 5, 10], "xyxy", "outside the image bounds"),
    ([10, 10, 40, 40], "xywh", "set \"bbox_format\": \"xyxy\""),  # corners read as [x, y, w, h]
])
def test_parse_box_rejects(raw, fmt, reason):
    box, err = parse_box(raw, fmt, (64, 48), "boxes[0]")
    assert box is None and err.startswith("boxes[0]: ") and reason in err, err


def test_parse_box_formats_and_edge_tolerance():
    assert parse_box([4, 6, 20, 10], "xywh", (64, 48), "b") == ((4, 6, 24, 16), None)
    assert parse_box([4, 6, 20, 10], "xyxy", (64, 48), "b") == ((4, 6, 20, 10), None)
    assert parse_box([0, 0, 64, 48], "xyxy", (64, 48), "b") == ((0, 0, 64, 48), None)
    # float rounding past an edge (< 1 px) is clipped; 1 px or more is an error
    assert EDGE_TOLERANCE == 1.0
    assert parse_box([-0.4, 0, 64.9, 48.5], "xyxy", (64, 48), "b") == ((0, 0, 64, 48), None)
    assert parse_box([0, 0, 65, 48], "xyxy", (64, 48), "b")[0] is None


# ----------------------------------------------------------------------------- JSONL: box keys and formats


@pytest.mark.parametrize("key", ["bbox", "box", "bboxes", "bounding_box", "region", "target_bbox"])
def test_jsonl_box_like_key_is_an_error_naming_boxes(tmp_path, key):
    """The RefCOCO-style row of the issue: ``bbox`` must never be dropped (whole image = target)."""
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    good = {"image": "a.png", "question": "q", "answer": "a", "boxes": [[0, 0, 8, 8]]}
    path = F.write_jsonl(tmp_path / "d.jsonl", [good, {"image": "a.png", "question": "q", "answer": "a",
                                                       key: [4, 6, 20, 10]}])
    with pytest.raises(ProbeDataError) as ei:
        read_jsonl(path)
    msg = str(ei.value)
    assert f"line 2: unknown key {key!r}" in msg and "'boxes'" in msg and '"bbox_format": "xywh"' in msg, msg
    assert [ln for ln, _ in ei.value.errors] == [2]


def test_jsonl_bbox_format_per_row_and_per_file(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    rows = [{"id": "a", "image": "a.png", "question": "q", "answer": "x", "boxes": [[4, 6, 20, 10]],
             "bbox_format": "xywh"},
            {"id": "b", "image": "a.png", "question": "q", "answer": "x", "boxes": [[4, 6, 20, 10]]},
            {"id": "c", "image": "a.png", "question": "q", "answer": "x", "boxes": [[4, 6, 20, 10]],
             "bbox_format": "xyxy"}]
    path = F.write_jsonl(tmp_path / "d.jsonl", rows)
    a, b, c = read_jsonl(path)
    assert a.boxes == [Box(0, 4, 6, 24, 16)] and b.boxes == [Box(0, 4, 6, 20, 10)] == c.boxes
    a, b, c = read_jsonl(path, bbox_format="xywh")  # the file's default; a row's own format wins
    assert a.boxes == [Box(0, 4, 6, 24, 16)] == b.boxes and c.boxes == [Box(0, 4, 6, 20, 10)]
    assert [s.id for s in load_probe(path, bbox_format="xywh")] == ["a", "b", "c"]
    assert load_probe(path, n=1, bbox_format="xywh")[0].boxes == [Box(0, 4, 6, 24, 16)]
    with pytest.raises(ProbeArgumentError, match="bbox_format 'xyxz' is not one of"):
        read_jsonl(path, bbox_format="xyxz")
    with pytest.raises(ProbeArgumentError, match=r"unknown option\(s\) \['template'\]; valid options: bbox_format"):
        load_probe(path, template="rec")
    bad = F.write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "bbox_format": "cxcywh"},
                                                 {**rows[0], "id": "z", "boxes": [[4, 6, -2, 10]]}])
    with pytest.raises(ProbeDataError) as ei:
        read_jsonl(bad)
    assert re.search(r"line 1: bbox_format 'cxcywh' is not one of 'xyxy', 'xywh'", str(ei.value))
    assert re.search(r"line 2: boxes\[0\]: empty box .*width \(-2\) <= 0", str(ei.value))


def test_jsonl_limit_validates_only_the_rows_it_reads(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "q", "answer": "a"}] * 3 + ['{"broken']
    path = F.write_jsonl(tmp_path / "d.jsonl", rows)
    assert len(read_jsonl(path, limit=3)) == 3
    with pytest.raises(ProbeDataError, match="line 4: malformed JSON"):
        read_jsonl(path)


# ----------------------------------------------------------------------------- JSONL: documents


def _doc_row(pages, **kw):
    return {"id": "d1", "pages": pages, "question": "What is the total?", "answer": "42", **kw}


def test_jsonl_document_rows(tmp_path):
    sizes = [(60, 80), (64, 96), (60, 80)]
    pages = F.write_pages(tmp_path / "doc1", sizes)
    rows = [
        _doc_row(pages, evidence_pages=[2]),                                               # whole page 2
        _doc_row(pages, id="d2", evidence_pages="[1, 3]",                                  # MMLongBench string
                 evidence_boxes=[{"page": 3, "box": [10, 20, 30, 40]}]),
        _doc_row(pages, id="d3", evidence_pages=[2], bbox_format="xywh",                   # MMDocIR page_size
                 evidence_boxes=[{"page": 2, "box": [100, 50, 200, 100], "page_size": [640, 960]}]),
    ]
    d1, d2, d3 = read_jsonl(F.write_jsonl(tmp_path / "docs.jsonl", rows))
    assert len(d1.images) == 3 and d1.image_sizes == sizes
    assert d1.boxes == [Box(1, 0, 0, 64, 96)] and d1.meta["evidence_pages"] == [2]
    assert np.array_equal(arr(d1.images[1]), arr(Image.open(tmp_path / "doc1" / "p2.png")))
    # page 1 has no box: the whole page; page 3: its box
    assert d2.boxes == [Box(0, 0, 0, 60, 80), Box(2, 10, 20, 30, 40)] and d2.meta["evidence_pages"] == [1, 3]
    # [x, y, w, h] in a 640x960 frame, scaled to the 64x96 page image: /10
    assert d3.boxes == [Box(1, 10, 5, 30, 15)]


@pytest.mark.parametrize("row,reason", [
    (dict(evidence_pages=[4]), "evidence page 4 out of range: the document has 3 page(s)"),
    (dict(evidence_pages=[0]), "page numbers are 1-based"),
    (dict(), "missing field 'evidence_pages'"),
    (dict(evidence_pages=[1], evidence_boxes=[{"page": 2, "box": [0, 0, 5, 5]}]),
     "page 2 is not an evidence page [1]"),
    (dict(evidence_pages=[1], evidence_boxes=[{"page": 5, "box": [0, 0, 5, 5]}]), "page 5 out of range"),
    (dict(evidence_pages=[1], evidence_boxes=[{"page": 1, "box": [0, 0, 61, 5]}]), "outside the image bounds"),
    (dict(evidence_pages=[1], evidence_boxes=[{"page": 1, "box": [0, 0, 5]}]), "4 numbers"),
    (dict(evidence_pages=[1], boxes=[[0, 0, 5, 5]]), "not 'boxes'"),
    (dict(evidence_pages=[1], bbox=[0, 0, 5, 5]), "unknown key 'bbox': a document row gives its target"),
    (dict(evidence_pages="page 2"), "not a JSON list"),
])
def test_jsonl_document_rows_rejected(tmp_path, row, reason):
    pages = F.write_pages(tmp_path / "doc1", [(60, 80)] * 3)
    good = _doc_row(pages, id="ok", evidence_pages=[1])
    path = F.write_jsonl(tmp_path / "docs.jsonl", [good, _doc_row(pages, **row)])
    with pytest.raises(ProbeDataError) as ei:
        read_jsonl(path)
    assert "line 2: " in str(ei.value) and reason in str(ei.value), str(ei.value)
    assert {ln for ln, _ in ei.value.errors} == {2}


def test_jsonl_document_missing_page_file(tmp_path):
    pages = F.write_pages(tmp_path / "doc1", [(60, 80)] * 2) + ["doc1/p3.png"]
    with pytest.raises(ProbeDataError, match=r"line 1: image file not found: 'doc1/p3.png'"):
        read_jsonl(F.write_jsonl(tmp_path / "docs.jsonl", [_doc_row(pages, evidence_pages=[1])]))


# ----------------------------------------------------------------------------- hf: lmms-lab RefCOCO


@pytest.fixture
def lmms(tmp_path):
    return F.write_lmms_lab(tmp_path / "RefCOCOg", splits=("val", "test"))


def test_hf_lmms_lab_schema(lmms):
    samples = load_probe(f"hf:{lmms}:val")
    assert [s.id for s in samples] == [r[0] for r in F.LMMS_ROWS]
    for k, (s, (qid, size, bbox, refs)) in enumerate(zip(samples, F.LMMS_ROWS)):
        assert s.image_sizes == [size] and isinstance(s.images, EncodedImages)
        assert s.boxes == [Box(0, *xywh(bbox))]
        assert s.meta["ref"] == refs[0] and s.meta["refs"] == refs and s.meta["schema"] == "lmms-lab"
        assert s.meta["bbox"] == bbox and s.meta["bbox_format"] == "xywh" and s.family == "grounding"
        assert refs[0] in s.question and s.question.startswith("Give the bounding box of")  # default: rec
        w, h = size
        x0, y0, x1, y1 = xywh(bbox)
        assert s.answer == f"[{x0 / w:.2f}, {y0 / h:.2f}, {x1 / w:.2f}, {y1 / h:.2f}]"
        assert np.array_equal(arr(s.images[0]), arr(F.noise_image(*size, k)))  # pixels: the written image
    # a custom template over the row's own columns
    s = load_probe(f"hf:{lmms}:test", n=1, template="Where is {ref}? ({file_name})", answer="{box}")[0]
    assert s.question == "Where is the dog on the left? (COCO_train2014_000000000000.jpg)"
    assert s.answer == "[4, 6, 24, 16]" and s.meta["split"] == "test"


@pytest.mark.parametrize("options,reason", [
    ({"template": "colour"}, "template 'colour' has no gold answer"),
    ({"template": "category"}, "uses field(s) ['category'] that this data does not have"),
    ({"template": "What is {thing}?", "answer": "x"}, "uses field(s) ['thing']"),
    ({"template": "What is {ref}?"}, "needs answer="),
    ({"template": "nonsense"}, "unknown template 'nonsense'; presets: rec"),
    ({"bogus": 1}, "unknown option(s) ['bogus']; valid options: answer, bbox_format, columns, schema, shuffle, template"),
    ({"schema": "refcoco"}, "unknown schema 'refcoco'; schemas: lmms-lab, jxu124, refs, documents, core"),
    ({"columns": {"ref": "caption"}}, "columns['ref'] = 'caption' is not a column"),
    ({"columns": {"mask": "segmentation"}}, "unknown role(s) ['mask']"),
    ({"bbox_format": "yxyx"}, "bbox_format 'yxyx' is not one of"),
])
def test_hf_option_errors(lmms, options, reason):
    with pytest.raises(ProbeArgumentError) as ei:
        load_probe(f"hf:{lmms}:val", **options)
    assert reason in str(ei.value), str(ei.value)


def test_hf_split_errors(lmms):
    with pytest.raises(ProbeArgumentError, match=r"has splits \['test', 'val'\]; name one: hf:.*:test"):
        load_probe(f"hf:{lmms}")
    with pytest.raises(ProbeArgumentError, match="Unknown split"):
        load_probe(f"hf:{lmms}:train")
    with pytest.raises(ProbeDataError, match="cannot load .*no such local path"):
        load_probe(f"hf:{lmms}_missing:val")
    one = lmms / "data" / "val-00000-of-00001.parquet"
    assert len(load_probe(f"hf:{one}")) == 3  # a single parquet file
    with pytest.raises(ProbeArgumentError, match="a single file has one split"):
        load_probe(f"hf:{one}:val")


def _bad_rows_dataset(tmp_path):
    rows = list(F.LMMS_ROWS) + [
        ("neg", (64, 48), [4.0, 6.0, -20.0, 10.0], ["x"]),       # 3: negative width
        ("nan", (64, 48), [float("nan"), 6.0, 20.0, 10.0], ["x"]),  # 4: NaN
        ("out", (64, 48), [50.0, 6.0, 20.0, 10.0], ["x"]),        # 5: outside the 64 px image
        ("ar3", (64, 48), [4.0, 6.0, 20.0], ["x"]),               # 6: wrong arity
        ("noref", (64, 48), [4.0, 6.0, 20.0, 10.0], []),          # 7: no expression
    ]
    return F.write_lmms_lab(tmp_path / "bad", rows=rows)


def test_hf_malformed_rows_name_the_row_and_the_fix(tmp_path):
    root = _bad_rows_dataset(tmp_path)
    with pytest.raises(ProbeDataError) as ei:
        load_probe(f"hf:{root}:val")
    msg = str(ei.value)
    assert "5 invalid row(s) (rows are 0-based dataset indices, ds[i])" in msg, msg
    assert sorted({i for i, _ in ei.value.errors}) == [3, 4, 5, 6, 7]
    for pattern in (r"row 3: column 'bbox': empty box .*width \(-20\.0\) <= 0",
                    r"row 4: column 'bbox': box .*NaN or infinity",
                    r"row 5: column 'bbox': box \[50\.0, 6\.0, 20\.0, 10\.0\] \(xywh\) outside the image bounds "
                    r"\(image size 64x48\)",
                    r"row 6: column 'bbox': box must be 4 numbers \[x, y, width, height\]",
                    r"row 7: column 'answer': no referring expression"):
        assert re.search(pattern, msg), (pattern, msg)
    assert len(load_probe(f"hf:{root}:val", n=3)) == 3  # the first 3 rows are fine


def test_hf_stray_box_column_is_an_error(tmp_path):
    import datasets

    root = F.write_lmms_lab(tmp_path / "x")
    ds = datasets.load_dataset(str(root), split="val")
    ds = ds.add_column("box_xyxy", [[0.0, 0.0, 1.0, 1.0]] * len(ds))
    ds.to_parquet(str(tmp_path / "two_boxes.parquet"))
    with pytest.raises(ProbeArgumentError, match=r"column\(s\) \['box_xyxy'\] look like boxes .* reads its target "
                                                 r"region from 'bbox'"):
        load_probe(f"hf:{tmp_path / 'two_boxes.parquet'}")
    # the user says which column holds the target: fine, in its format
    s = load_probe(f"hf:{tmp_path / 'two_boxes.parquet'}", n=1, columns={"bbox": "box_xyxy"}, bbox_format="xyxy")[0]
    assert s.boxes == [Box(0, 0, 0, 1, 1)]


def test_hf_reads_lazily(tmp_path, monkeypatch):
    """A 60-row dataset with --n 3: 3 rows read, 3 headers opened, no pixel decoded until used."""
    rows = [(f"q{i}", (16 + i, 16), [0.0, 0.0, 8.0, 8.0], [f"thing {i}"]) for i in range(60)]
    root = F.write_lmms_lab(tmp_path / "big", rows=rows)
    touched, decoded = [], []
    get, dec = R._Rows.__getitem__, EncodedImages.__getitem__
    monkeypatch.setattr(R._Rows, "__getitem__", lambda self, i: touched.append(i) or get(self, i))
    monkeypatch.setattr(EncodedImages, "__getitem__", lambda self, i: decoded.append(i) or dec(self, i))
    samples = load_probe(f"hf:{root}:val", n=3)
    assert touched == [0, 1, 2] and decoded == []
    assert [s.image_sizes for s in samples] == [[(16, 16)], [(17, 16)], [(18, 16)]]
    assert samples[2].images[0].size == (18, 16) and decoded == [0]
    assert touched[-1] == 2  # the image came from row 2 again, read on demand


def test_hf_shuffle_is_a_seeded_sample(lmms, tmp_path):
    rows = [(f"q{i}", (16, 16), [0.0, 0.0, 8.0, 8.0], [f"thing {i}"]) for i in range(20)]
    root = F.write_lmms_lab(tmp_path / "s", rows=rows)
    a = load_probe(f"hf:{root}:val", n=5, seed=3, shuffle=True)
    assert [s.id for s in a] == [f"q{i}" for i in random.Random(3).sample(range(20), 5)]
    assert [s.id for s in load_probe(f"hf:{root}:val", n=5, seed=3, shuffle=True)] == [s.id for s in a]
    assert [s.id for s in load_probe(f"hf:{root}:val", n=5, seed=4, shuffle=True)] != [s.id for s in a]
    assert [s.id for s in load_probe(f"hf:{root}:val", n=5)] == [f"q{i}" for i in range(5)]


def test_hf_jxu124_schema(tmp_path):
    imgs = tmp_path / "coco_root"
    root = F.write_jxu124(tmp_path / "refcocog", imgs)
    with pytest.raises(ProbeDataError, match=r"row 0: image 0: .*--image-root"):
        load_probe(f"hf:{root}:validation")
    a, b = load_probe(f"hf:{root}:validation", image_root=imgs)
    assert (a.id, a.meta["ref"], a.boxes) == ("101", "the small cat", [Box(0, 2, 3, 22, 33)])
    assert b.image_sizes == [(48, 64)] and b.boxes == [Box(0, 10, 10, 48, 64)]
    assert np.array_equal(arr(b.images[0]), arr(F.noise_image(48, 64, 51)))
    # category_id is a column, so a template can use it
    s = load_probe(f"hf:{root}:validation", image_root=imgs, n=1, template="Find {ref}.", answer="{category_id}")[0]
    assert (s.question, s.answer) == ("Find the small cat.", "17")


def test_hf_mapped_columns(tmp_path):
    import datasets

    ims = [F.noise_image(40, 30, 7), F.noise_image(30, 40, 8)]
    ds = datasets.Dataset.from_dict({"picture": ims, "caption": ["red mug", "blue pen"],
                                     "colour": ["red", "blue"], "region_xyxy": [[1, 2, 11, 12], [0, 0, 30, 40]]})
    ds.to_parquet(str(tmp_path / "mine.parquet"))
    with pytest.raises(ProbeArgumentError, match="cannot tell the schema from the columns"):
        load_probe(f"hf:{tmp_path / 'mine.parquet'}")
    cols = {"image": "picture", "ref": "caption", "bbox": "region_xyxy"}
    with pytest.raises(ProbeArgumentError, match="template 'colour' has no gold answer"):
        load_probe(f"hf:{tmp_path / 'mine.parquet'}", columns=cols, bbox_format="xyxy", template="colour")
    a, b = load_probe(f"hf:{tmp_path / 'mine.parquet'}", columns=cols, bbox_format="xyxy", template="colour",
                      answer="{colour}")
    assert (a.question, a.answer, a.boxes) == ("What is the colour of red mug? Answer with one word.", "red",
                                               [Box(0, 1, 2, 11, 12)])
    assert b.boxes == [Box(0, 0, 0, 30, 40)] and a.id == "mine.parquet:train:0"
    with pytest.raises(ProbeArgumentError, match=r"needs column\(s\) for \['ref'\]"):
        load_probe(f"hf:{tmp_path / 'mine.parquet'}", schema="refs", columns={"image": "picture",
                                                                                "bbox": "region_xyxy"})


def test_hf_core_schema_round_trip(tmp_path):
    """``to_hf_dataset`` -> parquet -> ``hf:`` gives back the same probe set (hash-identical)."""
    samples = generate("doc_needle", 2, seed=5) + generate("multi_image_needle", 2, seed=5, n_images=2)
    to_hf_dataset(samples).to_parquet(str(tmp_path / "set.parquet"))
    back = load_probe(f"hf:{tmp_path / 'set.parquet'}")
    assert probe_set_hash(back) == probe_set_hash(samples)
    assert [s.boxes for s in back] == [s.boxes for s in samples]
    with pytest.raises(ProbeArgumentError, match="schema 'core' takes no"):
        load_probe(f"hf:{tmp_path / 'set.parquet'}", template="rec")


def test_hf_documents_schema(tmp_path):
    import datasets
    from datasets import Features, List, Value

    feats = Features({"id": Value("string"), "pages": List(datasets.Image()), "question": Value("string"),
                      "answer": Value("string"), "evidence_pages": List(Value("int64")),
                      "evidence_boxes": List({"page": Value("int64"), "box": List(Value("float64")),
                                              "page_size": List(Value("int64"))})})
    pages = [F.noise_image(50, 70, 300 + k) for k in range(3)]
    ds = datasets.Dataset.from_dict({
        "id": ["a", "b"], "pages": [pages, pages[:2]], "question": ["q1", "q2"], "answer": ["x", "y"],
        "evidence_pages": [[3], [1, 2]],
        "evidence_boxes": [[{"page": 3, "box": [5, 5, 25, 35], "page_size": [100, 140]}], []]}, features=feats)
    ds.to_parquet(str(tmp_path / "docs.parquet"))
    a, b = load_probe(f"hf:{tmp_path / 'docs.parquet'}")
    assert a.boxes == [Box(2, 2.5, 2.5, 12.5, 17.5)] and a.family == "document" and len(a.images) == 3
    assert b.boxes == [Box(0, 0, 0, 50, 70), Box(1, 0, 0, 50, 70)] and b.meta["evidence_pages"] == [1, 2]
    assert np.array_equal(arr(a.images[2]), arr(pages[2]))
    bad = ds.map(lambda r, i: {"evidence_pages": [4] if i == 1 else r["evidence_pages"]}, with_indices=True)
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(ProbeDataError, match=r"row 1: evidence page 4 out of range: the document has 2 page"):
        load_probe(f"hf:{tmp_path / 'bad.parquet'}")


# ----------------------------------------------------------------------------- coco:


def test_coco_plain_instances(tmp_path):
    path, img = F.write_coco(tmp_path)
    with pytest.raises(ProbeArgumentError, match="pass --image-root"):
        load_probe(f"coco:{path}")
    with pytest.warns(UserWarning, match="2 of 5 annotations are not unique in their image's category"):
        samples = load_probe(f"coco:{path}", image_root=img)
    # the dog of image 1, the dog of image 2 (the crowd is never a target), the cup
    assert [s.id for s in samples] == ["coco:10", "coco:13", "coco:15"]
    dog, dog2, cup = samples
    assert dog.boxes == [Box(0, 1, 2, 31, 22)] and dog.meta["ref"] == "the dog" and dog.meta["category"] == "dog"
    assert np.array_equal(arr(dog.images[0]), arr(Image.open(img / "000001.jpg")))
    with pytest.warns(UserWarning, match="are skipped"):
        q = load_probe(f"coco:{path}", image_root=img, template="category", n=3)
    assert [(s.question, s.answer) for s in q][2] == ("What kind of object is the cup? Answer with one word.", "cup")
    with pytest.raises(ProbeDataError, match=r"2 of 5 annotations .*annotations\[1\], annotations\[2\]"):
        load_probe(f"coco:{path}", image_root=img, ambiguous="error")
    with pytest.raises(ProbeArgumentError, match=r"unknown option\(s\) \['bbox_format'\]"):
        load_probe(f"coco:{path}", image_root=img, bbox_format="xyxy")


def test_coco_refs_and_sentences(tmp_path):
    path, img = F.write_coco(tmp_path / "r", refs=True)
    samples = load_probe(f"coco:{path}", image_root=img)
    assert [(s.id, s.meta["ref"]) for s in samples] == [("ref:0", "the lower cat"), ("ref:1", "upper cat"),
                                                         ("ref:2", "a cup")]
    assert samples[0].boxes == [Box(0, 5, 30, 35, 59.5)] and samples[2].meta["refs"] == ["a cup", "cup"]
    assert [s.id for s in load_probe(f"coco:{path}", image_root=img, split="val")] == ["ref:0", "ref:2"]
    with pytest.raises(ProbeArgumentError, match=r"no refs in split 'testB'; splits: \['train', 'val'\]"):
        load_probe(f"coco:{path}", image_root=img, split="testB")
    path, img = F.write_coco(tmp_path / "s", sentences=True)
    samples = load_probe(f"coco:{path}", image_root=img)
    assert [(s.id, s.meta["ref"]) for s in samples] == [("coco:11", "the upper cat"), ("coco:12", "the lower cat")]


def test_coco_bad_entries(tmp_path):
    path, img = F.write_coco(tmp_path, refs=True)
    data = json.loads(path.read_text())
    data["refs"] += [{"ref_id": 3, "ann_id": 99, "sentences": [{"sent": "ghost"}]},       # refs[3]
                     {"ref_id": 4, "ann_id": 14, "sentences": [{"sent": "the crowd"}]}]   # refs[4]: crowd
    data["annotations"][5]["bbox"] = [3.0, 4.0, 40.0, 12.0]                             # the cup: outside
    data["images"][0]["width"] = 100                                                      # image 1: wrong size
    path.write_text(json.dumps(data))
    with pytest.raises(ProbeDataError) as ei:
        load_probe(f"coco:{path}", image_root=img)
    msg = str(ei.value)
    for pattern in (r"refs\[0\]: image '000001\.jpg' is 80x60 but 'images' says 100x60",
                    r"refs\[2\]: annotation 15 bbox: box \[3\.0, 4\.0, 40\.0, 12\.0\] \(xywh\) outside the image",
                    r"refs\[3\]: ann_id 99 is not an annotation id",
                    r"refs\[4\]: annotation 14 is a crowd region"):
        assert re.search(pattern, msg), (pattern, msg)
    (img / "000003.jpg").unlink()
    with pytest.raises(ProbeDataError, match=r"image file not found: '000003\.jpg'"):
        load_probe(f"coco:{path}", image_root=img, split="val")
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ProbeDataError, match=r"missing list\(s\) \['categories'\]"):
        load_probe(f"coco:{path}", image_root=img)


# ----------------------------------------------------------------------------- doc_needle


@pytest.mark.parametrize("knobs", [{}, {"n_pages": 7, "rows_per_page": 3, "font_scale": 3, "page_width": 420,
                                        "page_height": 300, "value_kind": "number"}])
def test_doc_needle_box_holds_the_value(knobs):
    samples = generate("doc_needle", 4, seed=2, **knobs)
    assert [s.id for s in samples] == [s.id for s in generate("doc_needle", 4, seed=2, **knobs)]
    assert probe_set_hash(samples) == probe_set_hash(generate("doc_needle", 4, seed=2, **knobs))
    for s in samples:
        k = s.meta["knobs"]
        assert len(s.images) == k["n_pages"] and all(im.size == (k["page_width"], k["page_height"])
                                                     for im in s.images)
        (box,) = s.boxes
        page = box.image
        assert s.meta["evidence_pages"] == [page + 1]
        entries = [e for lay in s.meta["layout"] for e in lay if e["kind"] == "entry"]
        keys = [e["key"] for e in entries]
        assert len(set(keys)) == len(keys) == k["n_pages"] * k["rows_per_page"]
        assert len({e["value"] for e in entries}) == len(entries)
        assert s.question.count(s.meta["key"]) == 1
        a = arr(s.images[page])
        patch = a[int(box.y0):int(box.y1), int(box.x0):int(box.x1)]
        np.testing.assert_array_equal(patch, arr(render_text(s.answer, k["font_scale"])))
        # every other page holds no entry with this key (the answer is on the evidence page only)
        assert [e["key"] for e in s.meta["layout"][page] if e["kind"] == "entry"].count(s.meta["key"]) == 1


def test_doc_needle_page_question_and_whole_page_region():
    for s in generate("doc_needle", 3, seed=4, question="page", n_pages=5):
        p = s.meta["evidence_pages"][0]
        assert s.answer == str(p) and s.aliases == [f"page {p}"]
        line, label = s.boxes
        assert line.image == label.image == p - 1
        a = arr(s.images[p - 1])
        patch = a[int(label.y0):int(label.y1), int(label.x0):int(label.x1)]
        np.testing.assert_array_equal(patch, arr(render_text(f"PAGE {p} OF 5", 2)))
    s = generate("doc_needle", 1, seed=4, region="page", evidence_page=3)[0]
    assert s.boxes == [Box(2, 0, 0, 336, 448)] and s.meta["evidence_pages"] == [3]


@pytest.mark.parametrize("knobs,reason", [
    ({"n_pages": 0}, "n_pages must be an int in [1, 32]"),
    ({"n_pages": 7, "rows_per_page": 10}, "more than the 60 distinct keys"),
    ({"rows_per_page": 20, "n_pages": 2}, "too small"),
    ({"evidence_page": 5}, "evidence_page must be an int in [0, 4]"),
    ({"question": "where"}, "question must be one of"),
    ({"pages": 3}, "unknown knob(s) ['pages']"),
])
def test_doc_needle_knob_errors(knobs, reason):
    with pytest.raises(ValueError) as ei:
        generate("doc_needle", 1, **knobs)
    assert reason in str(ei.value)


# ----------------------------------------------------------------------------- before weights load


def test_score_rejects_bad_sources_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import core_eval.loading

    monkeypatch.setattr(core_eval.loading, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    refcoco_row = {"image": "a.png", "question": "What is this?", "answer": "dog", "bbox": [4, 6, 20, 10]}
    jsonl = F.write_jsonl(tmp_path / "refs.jsonl", [refcoco_row])
    bad_hf = _bad_rows_dataset(tmp_path)
    cases = [([str(jsonl)], [r"line 1: unknown key 'bbox'", r"'boxes'", r"bbox_format"]),
             ([f"hf:{bad_hf}:val"], [r"row 3: column 'bbox'", r"row 5: .*outside the image bounds"]),
             ([f"hf:{bad_hf}:val", "--knobs", '{"template": "colour"}'], [r"template 'colour' has no gold answer"]),
             (["coco:" + str(tmp_path / "none.json"), "--image-root", str(tmp_path)], [r"cannot read"])]
    for probes, patterns in cases:
        rc = cli_main(["score", "--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "s.json"),
                       "--probes", *probes])
        err = capsys.readouterr().err
        assert rc == 2 and "core-eval score: error:" in err, err
        for pattern in patterns:
            assert re.search(pattern, err), (pattern, err)
        assert not (tmp_path / "s.json.partial").exists()


def test_score_hash_is_stable_and_content_sensitive(tmp_path):
    """The resume key hashes the probe contents: reloading gives the same hash, another box does not."""
    root = F.write_lmms_lab(tmp_path / "a")
    h = probe_set_hash(load_probe(f"hf:{root}:val"))
    assert probe_set_hash(load_probe(f"hf:{root}:val")) == h
    rows = [r if r[0] != "q1" else (r[0], r[1], [10.5, 0.0, 30.0, 40.0], r[3]) for r in F.LMMS_ROWS]
    assert probe_set_hash(load_probe(f"hf:{F.write_lmms_lab(tmp_path / 'b', rows=rows)}:val")) != h
    assert not math.isnan(float(int(h, 16) % 7))
