"""Synthetic retrieval probe families and their registry.

Families: ``grid_needle``, ``multi_image_needle``, ``text_lookup``, ``count_control`` (here) and the
multi-page ``doc_needle`` (:mod:`core_eval.probes.doc_needle`, registered below with :func:`_family`).
Each family is ``fn(n, seed=0, **knobs) -> list[ProbeSample]``. Sample ``i`` is drawn from its
own RNG seeded by sha256(family, seed, i), so generation is byte-identical across processes and
``generate(f, 5)[:3] == generate(f, 3)``. Ids are ``<family>-s<seed>-<knob hash>-<i>``, so
different knob settings never share an id. ``meta`` carries ``seed``, ``index``, the resolved
``knobs`` and the layout (for debugging and answer-uniqueness checks).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

from core_eval.probes.draw import (
    BACKGROUND, GRID_LINE, PALETTE, SHAPE_PLURALS, SHAPES, TEXT_COLOUR, bitmap_font, draw_shape,
)
from core_eval.probes.metrics import NUMBER_WORDS
from core_eval.probes.types import Box, ProbeArgumentError, ProbeDataError, ProbeSample

__all__ = ["PROBE_FAMILIES", "generate", "family_knobs", "question_key", "grid_needle", "multi_image_needle",
           "text_lookup", "count_control", "doc_needle", "KEY_WORDS", "KEY_LETTERS"]

PROBE_FAMILIES: dict[str, Callable[..., list[ProbeSample]]] = {}
_TYPES = [(c, s) for c in PALETTE for s in SHAPES]

#: Keys for ``text_lookup`` (lowercase, <= 8 characters, pairwise distinct).
KEY_WORDS = (
    "alpha", "amber", "anchor", "apple", "arrow", "autumn", "badge", "bamboo", "basin", "beacon",
    "birch", "bridge", "cabin", "canyon", "carbon", "cedar", "cobalt", "comet", "copper", "coral",
    "delta", "desert", "falcon", "fern", "forest", "garnet", "glacier", "granite", "harbor",
    "hazel", "island", "ivory", "jasper", "lantern", "lemon", "maple", "marble", "meadow",
    "nickel", "oasis", "orbit", "pebble", "pepper", "pillar", "planet", "quartz", "raven",
    "ribbon", "river", "saddle", "salmon", "silver", "spruce", "summit", "tundra", "velvet",
    "walnut", "willow", "winter", "zephyr",
)
_CODE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no O/0, I/1
#: Keys of the ``text_lookup`` table layout: capital letters that no digit resembles.
KEY_LETTERS = "ABCDEFGHJKLMNPQRTUVWXY"


def _rng(family: str, seed: int, i: int) -> random.Random:
    d = hashlib.sha256(f"core-probe|{family}|{int(seed)}|{int(i)}".encode()).digest()
    return random.Random(int.from_bytes(d[:8], "big"))


def _knob_hash(knobs: dict) -> str:
    return hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:8]


def _family(name: str, check: Callable[[dict], None]):
    """Register ``make_one(rng, **knobs) -> dict`` as family ``name`` (keyword defaults = knobs). The dict
    holds ``images`` and/or ``videos``, ``question``, ``answer``, ``boxes`` and optionally ``aliases``, ``meta``."""

    def deco(make_one):
        defaults = {p.name: p.default for p in inspect.signature(make_one).parameters.values()
                    if p.default is not inspect.Parameter.empty}

        def generator(n: int, seed: int = 0, **knobs: Any) -> list[ProbeSample]:
            unknown = sorted(set(knobs) - set(defaults))
            if unknown:
                raise ProbeArgumentError(f"{name}: unknown knob(s) {unknown}; valid knobs: {sorted(defaults)}")
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ProbeArgumentError(f"{name}: seed must be an int, got {seed!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{name}: n must be an int >= 0, got {n!r}")
            k = {**defaults, **knobs}
            check(k)
            kh = _knob_hash(k)
            out = []
            for i in range(n):
                r = make_one(_rng(name, seed, i), **k)
                out.append(ProbeSample(
                    id=f"{name}-s{seed}-{kh}-{i:05d}", images=r.get("images", []), question=r["question"],
                    answer=r["answer"], aliases=r.get("aliases", []), boxes=r["boxes"], family=name,
                    meta={"seed": seed, "index": i, "knobs": dict(k), **r.get("meta", {})},
                    videos=r.get("videos", []),
                ))
            return out

        generator.__name__ = name
        generator.__qualname__ = name
        generator.__doc__ = (make_one.__doc__ or "") + f"\n\nKnobs (defaults): {defaults}"
        generator.defaults = dict(defaults)
        PROBE_FAMILIES[name] = generator
        return generator

    return deco


def family_knobs(family: str) -> dict[str, Any]:
    """Default knobs of a registered family."""
    return dict(_lookup(family).defaults)


def _lookup(family: str):
    try:
        return PROBE_FAMILIES[family]
    except KeyError:
        raise ProbeArgumentError(f"unknown probe family {family!r}; registered: {sorted(PROBE_FAMILIES)}") from None


def generate(family: str, n: int, seed: int = 0, **knobs: Any) -> list[ProbeSample]:
    """``n`` samples of a registered family, deterministic in ``(seed, knobs)``."""
    return _lookup(family)(n, seed=seed, **knobs)


# ----------------------------------------------------------------------------- helpers

def _int(k, name, lo, hi=None):
    v = k[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"knob {name} must be an int in {rng}, got {v!r}")


def _frac(k, name, lo, hi):
    v = k[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"knob {name} must be a number in [{lo}, {hi}], got {v!r}")


def _choice(k, name, options):
    if k[name] not in options:
        raise ValueError(f"knob {name} must be one of {list(options)}, got {k[name]!r}")


def _distractor_pool(rng, target, n_types, confusable):
    """``n_types`` distinct (colour, shape) types != target; with ``confusable`` those sharing
    the target's colour or shape come first."""
    others = [t for t in _TYPES if t != target]
    if not confusable:
        return rng.sample(others, n_types)
    near = [t for t in others if t[0] == target[0] or t[1] == target[1]]
    far = [t for t in others if t not in near]
    rng.shuffle(near)
    rng.shuffle(far)
    return (near + far)[:n_types]


def _fill(rng, pool, m):
    """``m`` items from ``pool``: each pool type at least once when ``m`` allows, shuffled."""
    seq = list(pool[:m]) + [rng.choice(pool) for _ in range(m - len(pool))]
    rng.shuffle(seq)
    return seq


def _jittered(rng, x0, y0, cw, ch, size, jitter):
    """Top-left of a ``size`` square inside a ``cw x ch`` slot (keeps >= 1/4 of the free space)."""
    fx, fy = cw - size, ch - size
    if jitter:
        return x0 + rng.randint(fx // 4, fx - fx // 4), y0 + rng.randint(fy // 4, fy - fy // 4)
    return x0 + fx // 2, y0 + fy // 2


def _name(t):
    return f"{t[0]} {t[1]}"


def _grid_lines(d, off: int, cell: int, g: int) -> None:
    """2 px lines centred on the boundaries of a ``g x g`` table of ``cell`` px cells at ``off``."""
    end = off + g * cell
    for j in range(g + 1):
        p = off + j * cell
        d.rectangle([max(off, p - 1), off, min(end - 1, p), end - 1], fill=GRID_LINE)
        d.rectangle([off, max(off, p - 1), end - 1, min(end - 1, p)], fill=GRID_LINE)


# ----------------------------------------------------------------------------- grid_needle

def _check_grid(k):
    _int(k, "grid", 2, 16)
    _int(k, "image_size", 32, 4096)
    _int(k, "n_distractor_types", 1, len(_TYPES) - 1)
    _frac(k, "shape_scale", 0.2, 0.85)
    if k["image_size"] // k["grid"] < 16:
        raise ValueError(f"cells too small: image_size {k['image_size']} / grid {k['grid']} < 16 px")


@_family("grid_needle", _check_grid)
def _grid_needle(rng, grid=4, image_size=448, n_distractor_types=4, confusable=False, shape_scale=0.7):
    """A ``grid x grid`` table of solid shapes; the question names one cell and asks its content.

    The asked cell's (colour, shape) occurs exactly once in the grid; box = that cell.
    ``n_distractor_types``: distinct types among the other cells (exact when cells allow);
    ``confusable``: distractor types share the target's colour or shape first.
    """
    g, S = grid, image_size
    target = rng.choice(_TYPES)
    pool = _distractor_pool(rng, target, n_distractor_types, bool(confusable))
    tcell = rng.randrange(g * g)
    fill = _fill(rng, pool, g * g - 1)
    cells = fill[:tcell] + [target] + fill[tcell:]

    c = S // g
    off = (S - c * g) // 2
    size = min(int(c * shape_scale), c - 6)
    inset = (c - size) // 2
    im = Image.new("RGB", (S, S), BACKGROUND)
    d = ImageDraw.Draw(im)
    for idx, (colour, shape) in enumerate(cells):
        r, col = divmod(idx, g)
        x0, y0 = off + col * c + inset, off + r * c + inset
        draw_shape(d, shape, PALETTE[colour], (x0, y0, x0 + size, y0 + size))
    _grid_lines(d, off, c, g)

    tr, tc = divmod(tcell, g)
    box = Box(0, off + tc * c, off + tr * c, off + (tc + 1) * c, off + (tr + 1) * c)
    return {
        "images": [im],
        "question": (f"What is in {_grid_address(tr, tc)} of the grid (rows counted from "
                     f"the top, columns from the left)? Answer with the colour and shape."),
        "answer": _name(target),
        "boxes": [box],
        "meta": {"cell": [tr, tc], "target": list(target), "cells": [_name(t) for t in cells]},
    }


grid_needle = PROBE_FAMILIES["grid_needle"]


# ----------------------------------------------------------------------------- multi_image_needle

def _check_multi(k):
    _int(k, "n_images", 1, 16)
    _int(k, "objects_per_image", 1, 64)
    _int(k, "image_size", 32, 4096)
    _int(k, "n_distractor_types", 1, len(_TYPES) - 1)
    _frac(k, "shape_scale", 0.2, 0.85)
    _choice(k, "variant", ("which_image", "right_of"))
    if k["variant"] == "which_image" and k["n_images"] < 2:
        raise ValueError("variant 'which_image' needs n_images >= 2")
    if k["variant"] == "right_of" and k["objects_per_image"] < 2:
        raise ValueError("variant 'right_of' needs objects_per_image >= 2")
    cols = math.ceil(math.sqrt(k["objects_per_image"]))
    if k["image_size"] // cols < 16:
        raise ValueError(f"objects too small: image_size {k['image_size']} / {cols} columns < 16 px")


@_family("multi_image_needle", _check_multi)
def _multi_image_needle(rng, n_images=4, objects_per_image=4, image_size=336, n_distractor_types=6,
                        confusable=False, variant="which_image", shape_scale=0.6, jitter=True):
    """``n_images`` scenes of solid shapes; one needle (colour, shape) occurs exactly once overall.

    ``variant="which_image"``: "Which image contains a blue triangle?" -> "2" (1-based, alias
    "image 2"); boxes = [needle]. ``variant="right_of"``: "What is directly to the right of the
    blue triangle?" -> the neighbour's "colour shape"; boxes = [needle, neighbour]
    (``meta["box_roles"]``). Objects sit in a ceil(sqrt(k))-column slot grid, jittered.
    """
    k, S = objects_per_image, image_size
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    target = rng.choice(_TYPES)
    pool = _distractor_pool(rng, target, n_distractor_types, bool(confusable))
    layouts = [sorted(rng.sample(range(rows * cols), k)) for _ in range(n_images)]
    needle_img = rng.randrange(n_images)
    lay = layouts[needle_img]
    if variant == "right_of":  # a full row always exists, so this is never empty
        needle_slot = rng.choice([s for s in lay if s % cols < cols - 1 and s + 1 in lay])
    else:
        needle_slot = rng.choice(lay)
    fill = _fill(rng, pool, n_images * k - 1)

    cw, ch = S // cols, S // rows
    size = int(min(cw, ch) * shape_scale)
    images, objects, boxes_by = [], [], {}
    for m, lay in enumerate(layouts):
        im = Image.new("RGB", (S, S), BACKGROUND)
        d = ImageDraw.Draw(im)
        objs = []
        for s in lay:
            t = target if (m, s) == (needle_img, needle_slot) else fill.pop()
            r, c = divmod(s, cols)
            x, y = _jittered(rng, c * cw, r * ch, cw, ch, size, jitter)
            draw_shape(d, t[1], PALETTE[t[0]], (x, y, x + size, y + size))
            boxes_by[(m, s)] = (Box(m, x, y, x + size, y + size), t)
            objs.append({"slot": s, "type": _name(t), "box": [x, y, x + size, y + size]})
        images.append(im)
        objects.append(objs)

    needle_box = boxes_by[(needle_img, needle_slot)][0]
    n = n_images
    if variant == "which_image":
        q = (f"The {n} images are numbered 1 to {n} in the order shown. Which image contains "
             f"a {_name(target)}? Answer with the image number.")
        answer, aliases, boxes, roles = str(needle_img + 1), [f"image {needle_img + 1}"], [needle_box], ["needle"]
    else:
        nb_box, nb_t = boxes_by[(needle_img, needle_slot + 1)]
        where = "One of the images contains" if n > 1 else "The image contains"
        q = (f"{where} a {_name(target)}. What is directly to the right of the {_name(target)}? "
             f"Answer with the colour and shape.")
        answer, aliases, boxes, roles = _name(nb_t), [], [needle_box, nb_box], ["needle", "answer"]
    return {
        "images": images, "question": q, "answer": answer, "aliases": aliases, "boxes": boxes,
        "meta": {"needle_image": needle_img, "target": list(target), "box_roles": roles,
                 "objects": objects, "grid": [rows, cols]},
    }


multi_image_needle = PROBE_FAMILIES["multi_image_needle"]


# ----------------------------------------------------------------------------- text_lookup

_GLYPH_W, _LINE_H, _ROW_PITCH, _MARGIN = 6, 11, 15, 6
_TITLE = "RECORD SHEET"


def _text_layout(k):
    base = k["image_size"] // k["font_scale"]
    top = _MARGIN + _LINE_H + 8
    max_rows = (base - _MARGIN - top) // _ROW_PITCH
    longest = max(len(w) for w in KEY_WORDS) + 2 + k["value_len"]
    return base, top, max_rows, _MARGIN * 2 + longest * _GLYPH_W


def _check_text(k):
    _choice(k, "layout", ("page", "table"))
    _int(k, "image_size", 64, 4096)
    _int(k, "font_scale", 1, 8)
    _choice(k, "value_kind", ("code", "number", "mixed"))
    _int(k, "table_side", 0, 16)
    _int(k, "n_keys", 1, len(KEY_LETTERS))
    if k["layout"] == "table":
        _int(k, "n_rows", 1, k["n_keys"])
        _int(k, "value_len", 1, 12)
        g = k["table_side"] or math.ceil(math.sqrt(k["n_rows"]))
        if g * g < k["n_rows"]:
            raise ValueError(f"table_side {g} holds {g * g} entries, fewer than n_rows {k['n_rows']}")
        cell = k["image_size"] // g
        if cell < (1 + k["value_len"]) * _GLYPH_W + 2:
            raise ValueError(f"table cells too small: {k['n_rows']} entries of {1 + k['value_len']} "
                             f"characters need image_size >= {g * ((1 + k['value_len']) * _GLYPH_W + 2)}")
        return
    _int(k, "n_rows", 1, len(KEY_WORDS))
    _int(k, "value_len", 2, 12)
    base, _, max_rows, width = _text_layout(k)
    if k["n_rows"] > max_rows:
        raise ValueError(f"n_rows {k['n_rows']} does not fit: at most {max_rows} rows with "
                         f"image_size {k['image_size']} and font_scale {k['font_scale']}")
    if width > base:
        raise ValueError(f"lines too wide ({width * k['font_scale']} px) for image_size {k['image_size']}")


def _value(rng, kind, n):
    if kind == "mixed":
        kind = rng.choice(("code", "number"))
    if kind == "number":
        return str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))
    while True:  # letters and digits both present
        v = "".join(rng.choice(_CODE_CHARS) for _ in range(n))
        if any(ch.isdigit() for ch in v) and any(ch.isalpha() for ch in v):
            return v


def _key_values(rng, n, kind, value_len) -> tuple[list[str], list[str]]:
    """``n`` distinct keys of :data:`KEY_WORDS` and ``n`` distinct values (drawn in that order)."""
    keys = rng.sample(KEY_WORDS, n)
    values: list[str] = []
    while len(values) < n:
        v = _value(rng, kind, value_len)
        if v not in values:
            values.append(v)
    return keys, values


@_family("text_lookup", _check_text)
def _text_lookup(rng, n_rows=8, image_size=448, value_kind="code", value_len=4, font_scale=2,
                 layout="page", table_side=0, n_keys=len(KEY_LETTERS)):
    """A document page of ``key: value`` lines; "What is the value of <key>?" -> the value.

    Pillow's bitmap font (no anti-aliasing) upscaled ``font_scale``x with nearest-neighbour.
    Keys and values are distinct within a page; box = the value's text bbox (``textbbox``).

    ``layout="table"``: a form of labelled boxes for low-resolution vision, the text as large
    as its cell allows: a ``table_side`` x ``table_side`` table (0: the smallest that holds
    ``n_rows``) with ``n_rows`` entries in random cells (row-major order), each a key letter
    directly followed by its value (``B7``); keys are distinct letters among the first ``n_keys``
    of :data:`KEY_LETTERS` (the key alphabet: a difficulty knob), values are distinct when
    ``value_kind`` / ``value_len`` allow (``font_scale`` is not used). At 448 px with 16
    entries, a model that sees the image at 64 px gets each cell as one 16 px patch with the
    bitmap glyphs near their native size.
    """
    if layout == "table":
        return _text_table(rng, n_rows, image_size, value_kind, value_len, table_side, n_keys)
    base, top, _, _ = _text_layout({"image_size": image_size, "font_scale": font_scale,
                                    "value_len": value_len})
    keys, values = _key_values(rng, n_rows, value_kind, value_len)
    t = rng.randrange(n_rows)

    font = bitmap_font()
    page = Image.new("RGB", (base, base), BACKGROUND)
    d = ImageDraw.Draw(page)
    d.text((_MARGIN, _MARGIN), _TITLE, font=font, fill=TEXT_COLOUR)
    d.rectangle([_MARGIN, _MARGIN + _LINE_H + 3, base - _MARGIN - 1, _MARGIN + _LINE_H + 3],
                fill=TEXT_COLOUR)
    vbox = None
    rows = []
    for j, (key, val) in enumerate(zip(keys, values)):
        y = top + j * _ROW_PITCH
        label = f"{key}: "
        d.text((_MARGIN, y), label, font=font, fill=TEXT_COLOUR)
        xv = _MARGIN + int(d.textlength(label, font=font))
        d.text((xv, y), val, font=font, fill=TEXT_COLOUR)
        bb = d.textbbox((xv, y), val, font=font)
        rows.append({"key": key, "value": val, "value_box": [v * font_scale for v in bb]})
        if j == t:
            vbox = bb
    im = Image.new("RGB", (image_size, image_size), BACKGROUND)
    im.paste(page.resize((base * font_scale, base * font_scale), Image.NEAREST), (0, 0))
    s = font_scale
    return {
        "images": [im],
        "question": _text_question(keys[t]),
        "answer": values[t],
        "boxes": [Box(0, vbox[0] * s, vbox[1] * s, vbox[2] * s, vbox[3] * s)],
        "meta": {"row": t, "key": keys[t], "rows": rows},
    }


def _grid_address(r: int, c: int) -> str:
    """How a grid_needle question names cell ``(r, c)`` (0-based)."""
    return f"row {r + 1}, column {c + 1}"


def _count_subject(count_by: str, target: str) -> str:
    """What a count_control question counts: ``"red shapes"`` or ``"circles"``."""
    return f"{target} shapes" if count_by == "colour" else SHAPE_PLURALS[target]


def question_key(sample: ProbeSample) -> str:
    """The words of ``sample.question`` that name what is to be retrieved (RAM with
    ``query_rows="key"`` reads the attention of their tokens): the cell address (grid_needle), the
    object (multi_image_needle), the counted colour / shape (count_control), the key (text and
    document families); any probe may set it as ``meta["query_key"]``. Raises
    :class:`ProbeDataError` when a probe has none, or when it does not occur in the question."""
    m, fam = sample.meta, sample.family
    if "query_key" in m:
        key = m["query_key"]
    elif fam == "grid_needle" and "cell" in m:
        key = _grid_address(*m["cell"])
    elif fam == "multi_image_needle" and "target" in m:
        key = _name(m["target"])
    elif fam == "count_control" and "target" in m:
        key = _count_subject(m.get("count_by", "colour"), m["target"])
    elif isinstance(m.get("key"), str):
        key = m["key"]
    else:
        raise ProbeDataError(
            f"probe {sample.id!r} (family {fam!r}) names no key for query_rows='key': the built-in "
            "grid_needle, multi_image_needle, count_control, text_lookup and doc_needle probes do; "
            "for others write the question's key words into the record's meta as \"query_key\"")
    if not isinstance(key, str) or not key or key not in sample.question:
        raise ProbeDataError(f"probe {sample.id!r}: its key {key!r} does not occur in the question "
                             f"{sample.question!r}; set meta[\"query_key\"] to words the question contains")
    return key


def _text_question(key: str) -> str:
    return f"What is the value of {key}? Answer with the value only."


def _n_values(kind: str, n: int) -> int:
    """How many distinct values of ``n`` characters the table can draw (a 1-character value
    is always a digit 1-9; codes of >= 2 characters: plenty)."""
    return 9 * 10 ** (n - 1) if kind == "number" or n == 1 else 10 ** 6


def _text_table(rng, n_rows, image_size, value_kind, value_len, side, n_keys):
    keys = rng.sample(KEY_LETTERS[:n_keys], n_rows)
    distinct = _n_values(value_kind, value_len) >= n_rows
    values: list[str] = []
    while len(values) < n_rows:
        v = _value(rng, "number" if value_len == 1 else value_kind, value_len)
        if not distinct or v not in values:
            values.append(v)
    t = rng.randrange(n_rows)

    g = side or math.ceil(math.sqrt(n_rows))
    cells = sorted(rng.sample(range(g * g), n_rows))
    cell = image_size // g
    off = (image_size - cell * g) // 2
    font = bitmap_font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1), BACKGROUND))
    im = Image.new("RGB", (image_size, image_size), BACKGROUND)
    d = ImageDraw.Draw(im)
    _grid_lines(d, off, cell, g)
    rows, vbox = [], None
    for i, (j, key, val) in enumerate(zip(cells, keys, values)):
        # glyphs as large as the cell allows (90% of it), nearest-neighbour, centred
        l, tp, r, b = probe.textbbox((0, 0), key + val, font=font)
        w, h = r - l, b - tp
        sc = max(1, int(cell * 0.9) // max(w, h))
        glyphs = Image.new("RGB", (w, h), BACKGROUND)
        gd = ImageDraw.Draw(glyphs)
        gd.text((-l, -tp), key + val, font=font, fill=TEXT_COLOUR)
        kx = int(gd.textlength(key, font=font))  # where the value starts
        vb = gd.textbbox((-l + kx, -tp), val, font=font)
        r_, c_ = divmod(j, g)
        x0 = off + c_ * cell + (cell - w * sc) // 2
        y0 = off + r_ * cell + (cell - h * sc) // 2
        im.paste(glyphs.resize((w * sc, h * sc), Image.NEAREST), (x0, y0))
        box = [x0 + vb[0] * sc, y0 + vb[1] * sc, x0 + vb[2] * sc, y0 + vb[3] * sc]
        rows.append({"key": key, "value": val, "value_box": box, "cell": [r_, c_]})
        if i == t:
            vbox = box
    return {
        "images": [im],
        "question": _text_question(keys[t]),
        "answer": values[t],
        "boxes": [Box(0, *vbox)],
        "meta": {"row": t, "key": keys[t], "rows": rows, "grid": g},
    }


text_lookup = PROBE_FAMILIES["text_lookup"]


# ----------------------------------------------------------------------------- count_control

def _check_count(k):
    _int(k, "min_count", 0, 64)
    _int(k, "max_count", 0, 64)
    _int(k, "n_distractors", 0, 64)
    _int(k, "image_size", 32, 4096)
    _frac(k, "shape_scale", 0.2, 0.85)
    _choice(k, "count_by", ("colour", "shape"))
    if k["max_count"] < k["min_count"]:
        raise ValueError(f"max_count {k['max_count']} < min_count {k['min_count']}")
    g = _count_grid(k["max_count"] + k["n_distractors"])
    if k["image_size"] // g < 16:
        raise ValueError(f"too many objects ({k['max_count']} + {k['n_distractors']}) for "
                         f"image_size {k['image_size']}")


def _count_grid(total):
    return max(2, math.ceil(math.sqrt(max(total, 1) * 1.5)))


@_family("count_control", _check_count)
def _count_control(rng, min_count=1, max_count=5, n_distractors=4, count_by="colour",
                   image_size=448, shape_scale=0.7, jitter=True):
    """Whole-image control: "How many red shapes are there?" -> "3" (digits; alias "three").

    Count ~ U[min_count, max_count]; ``n_distractors`` objects of other colours (or shapes with
    ``count_by="shape"``). Boxes = every target object (the answer needs all of them); a count
    of 0 gives no boxes, i.e. the whole image.
    """
    count = rng.randint(min_count, max_count)
    total = count + n_distractors
    g = _count_grid(total)
    slots = rng.sample(range(g * g), total)
    colours = list(PALETTE)
    if count_by == "colour":
        tcol = rng.choice(colours)
        others = [c for c in colours if c != tcol]
        types = ([(tcol, rng.choice(SHAPES)) for _ in range(count)]
                 + [(rng.choice(others), rng.choice(SHAPES)) for _ in range(n_distractors)])
        target = tcol
    else:
        tshape = rng.choice(SHAPES)
        others = [s for s in SHAPES if s != tshape]
        types = ([(rng.choice(colours), tshape) for _ in range(count)]
                 + [(rng.choice(colours), rng.choice(others)) for _ in range(n_distractors)])
        target = tshape
    subject = _count_subject(count_by, target)

    S = image_size
    cell = S // g
    size = int(cell * shape_scale)
    im = Image.new("RGB", (S, S), BACKGROUND)
    d = ImageDraw.Draw(im)
    boxes, objects = [], []
    for j, (slot, t) in enumerate(zip(slots, types)):
        r, c = divmod(slot, g)
        x, y = _jittered(rng, c * cell, r * cell, cell, cell, size, jitter)
        draw_shape(d, t[1], PALETTE[t[0]], (x, y, x + size, y + size))
        objects.append({"type": _name(t), "target": j < count, "box": [x, y, x + size, y + size]})
        if j < count:
            boxes.append(Box(0, x, y, x + size, y + size))
    return {
        "images": [im],
        "question": f"How many {subject} are there in the image? Answer with a number.",
        "answer": str(count),
        "aliases": [NUMBER_WORDS[count]] if count < len(NUMBER_WORDS) else [],
        "boxes": boxes,
        "meta": {"count": count, "count_by": count_by, "target": target, "objects": objects},
    }


count_control = PROBE_FAMILIES["count_control"]


# ----------------------------------------------------------------------------- doc_needle (own module)

from core_eval.probes.doc_needle import doc_needle  # noqa: E402  (importing it registers "doc_needle")
