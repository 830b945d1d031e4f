"""``doc_needle``: multi-page documents with one needle entry (the document domain, generated offline).

Each page is one image: a title, a page label ("PAGE k OF N") and ``rows_per_page`` lines
``key: value``; keys and values are distinct across the whole document. One entry on the evidence
page is asked about. Like MMLongBench-Doc / MMDocIR samples, ``meta`` carries the 1-based
``evidence_pages`` and the ``layout`` of every page (title, page label and entry boxes).

Deterministic like every family in :mod:`core_eval.probes.families` (registered there with its
decorator).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from core_eval.probes.draw import BACKGROUND, TEXT_COLOUR, bitmap_font
from core_eval.probes.families import KEY_WORDS, PROBE_FAMILIES, _choice, _family, _int, _key_values
from core_eval.probes.types import Box

__all__ = ["doc_needle"]

_GLYPH_W, _LINE_H, _ROW_PITCH, _MARGIN = 6, 11, 15, 6
_TITLE = "REPORT"


def _check_doc(k):
    _int(k, "n_pages", 1, 32)
    _int(k, "rows_per_page", 1, len(KEY_WORDS))
    _int(k, "page_width", 64, 4096)
    _int(k, "page_height", 64, 4096)
    _int(k, "font_scale", 1, 8)
    _int(k, "value_len", 2, 12)
    _int(k, "evidence_page", 0, k["n_pages"])
    _choice(k, "value_kind", ("code", "number", "mixed"))
    _choice(k, "question", ("value", "page"))
    _choice(k, "region", ("box", "page"))
    if k["n_pages"] * k["rows_per_page"] > len(KEY_WORDS):
        raise ValueError(f"n_pages x rows_per_page = {k['n_pages'] * k['rows_per_page']} entries, more than the "
                         f"{len(KEY_WORDS)} distinct keys")
    s = k["font_scale"]
    w, h = k["page_width"] // s, k["page_height"] // s
    need_h = _top() + k["rows_per_page"] * _ROW_PITCH + _MARGIN
    need_w = 2 * _MARGIN + (max(len(x) for x in KEY_WORDS) + 2 + k["value_len"]) * _GLYPH_W
    label_w = 2 * _MARGIN + (len(_TITLE) + 1 + len(_page_label(k["n_pages"], k["n_pages"]))) * _GLYPH_W
    if need_h > h or max(need_w, label_w) > w:
        raise ValueError(f"page {k['page_width']}x{k['page_height']} px too small for {k['rows_per_page']} rows at "
                         f"font_scale {s}: needs {max(need_w, label_w) * s}x{need_h * s}")


def _top() -> int:
    return _MARGIN + _LINE_H + 8


def _page_label(p: int, n: int) -> str:
    return f"PAGE {p} OF {n}"


def _draw_page(p, n, entries, W, H, s):
    """One page image and its layout (boxes in page pixels)."""
    font = bitmap_font()
    w, h = W // s, H // s
    page = Image.new("RGB", (w, h), BACKGROUND)
    d = ImageDraw.Draw(page)
    layout = []

    def put(xy, text, kind, **extra):
        d.text(xy, text, font=font, fill=TEXT_COLOUR)
        bb = d.textbbox(xy, text, font=font)
        layout.append({"kind": kind, "text": text, "box": [v * s for v in bb], **extra})
        return bb

    put((_MARGIN, _MARGIN), _TITLE, "title")
    label = _page_label(p, n)
    put((w - _MARGIN - int(d.textlength(label, font=font)), _MARGIN), label, "page_label")
    d.rectangle([_MARGIN, _MARGIN + _LINE_H + 3, w - _MARGIN - 1, _MARGIN + _LINE_H + 3], fill=TEXT_COLOUR)
    for j, (key, val) in enumerate(entries):
        y = _top() + j * _ROW_PITCH
        lab = f"{key}: "
        d.text((_MARGIN, y), lab, font=font, fill=TEXT_COLOUR)
        kb = d.textbbox((_MARGIN, y), key, font=font)
        xv = _MARGIN + int(d.textlength(lab, font=font))
        d.text((xv, y), val, font=font, fill=TEXT_COLOUR)
        vb = d.textbbox((xv, y), val, font=font)
        layout.append({"kind": "entry", "text": f"{key}: {val}", "key": key, "value": val,
                       "box": [kb[0] * s, min(kb[1], vb[1]) * s, vb[2] * s, max(kb[3], vb[3]) * s],
                       "key_box": [v * s for v in kb], "value_box": [v * s for v in vb]})
    im = Image.new("RGB", (W, H), BACKGROUND)
    im.paste(page.resize((w * s, h * s), Image.NEAREST), (0, 0))
    return im, layout


@_family("doc_needle", _check_doc)
def _doc_needle(rng, n_pages=4, rows_per_page=10, page_width=336, page_height=448, font_scale=2, value_len=4,
                value_kind="code", question="value", region="box", evidence_page=0):
    """A document of ``n_pages`` page images; one entry ``key: value`` on the evidence page is asked.

    ``question="value"``: "What is the value of <key> in this document?" -> the value; box = the
    value's text. ``question="page"``: "On which page ... is <key> listed?" -> the 1-based page
    number (alias "page k"); boxes = the entry line and the page label. ``region="page"``: the
    target is the whole evidence page instead (page-level retrieval, as MMDocIR scores it).
    ``evidence_page``: 1-based page of the needle (0: drawn at random).
    """
    total = n_pages * rows_per_page
    keys, values = _key_values(rng, total, value_kind, value_len)
    e = evidence_page - 1 if evidence_page else rng.randrange(n_pages)
    t = rng.randrange(rows_per_page)
    images, layouts = [], []
    for p in range(n_pages):
        entries = list(zip(keys[p * rows_per_page:(p + 1) * rows_per_page],
                           values[p * rows_per_page:(p + 1) * rows_per_page]))
        im, lay = _draw_page(p + 1, n_pages, entries, page_width, page_height, font_scale)
        images.append(im)
        layouts.append(lay)
    entry = [x for x in layouts[e] if x["kind"] == "entry"][t]
    label = next(x for x in layouts[e] if x["kind"] == "page_label")
    key = entry["key"]
    if question == "value":
        q = f"What is the value of {key} in this document? Answer with the value only."
        answer, aliases, region_boxes, roles = entry["value"], [], [entry["value_box"]], ["value"]
    else:
        q = (f"The {n_pages} images are the pages of one document, in order. On which page is {key} listed? "
             "Answer with the page number.")
        answer, aliases = str(e + 1), [f"page {e + 1}"]
        region_boxes, roles = [entry["box"], label["box"]], ["entry", "page_label"]
    if region == "page":
        region_boxes, roles = [[0, 0, page_width, page_height]], ["page"]
    return {
        "images": images, "question": q, "answer": answer, "aliases": aliases,
        "boxes": [Box(e, *b) for b in region_boxes],
        "meta": {"evidence_pages": [e + 1], "key": key, "row": t, "box_roles": roles, "layout": layouts},
    }


doc_needle = PROBE_FAMILIES["doc_needle"]
