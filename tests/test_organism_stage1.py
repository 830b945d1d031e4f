"""Stage-1 patch labels of the organism's vision tower (core_eval/organism/train.py ``patch_labels``),
checked against the pixels of the probe's own images."""

from __future__ import annotations

import numpy as np
import pytest

from core_eval.organism.data import make_samples
from core_eval.organism.train import _COLOURS, _SHAPES, IMAGE, PATCH, PATCH_TARGETS, patch_labels

G = IMAGE // PATCH
NONE = {t: n - 1 for t, n in PATCH_TARGETS.items()}


def _ink(image) -> np.ndarray:
    """(G, G, h, w) per patch: which pixels differ from the background (the top-left pixel)."""
    a = np.asarray(image.convert("RGB")).astype(int)
    ink = (np.abs(a - a[0, 0]).sum(-1) > 0)
    s = a.shape[0] // G
    return ink[:G * s, :G * s].reshape(G, s, G, s).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("fam", ["grid_needle", "count_control", "multi_image_needle"])
def test_centre_labels_mark_one_patch_per_object_and_it_has_ink(fam):
    """Default labels: exactly one labelled patch per object (objects never share one here), and the
    labelled patch holds drawn pixels in the image itself."""
    for s in make_samples(fam, 6, seed=3, style="plain"):
        labs = patch_labels(s)
        objs = ([s.meta["cells"]] if fam == "grid_needle" else [s.meta["objects"]] if fam == "count_control"
                else s.meta["objects"])
        assert len(labs) == len(s.images) == len(objs)
        for lab, im, o in zip(labs, s.images, objs):
            marked = [p for p in range(G * G) if lab["colour"][p] != NONE["colour"]]
            assert len(marked) == len(o)
            ink = _ink(im)
            assert all(ink[p // G, p % G].any() for p in marked)
            assert set(lab["key"]) == {NONE["key"]}   # no glyph targets on shape images


def test_cover_labels_are_the_patches_the_object_covers():
    """``cover=f``: a patch is labelled with an object iff the object's box covers >= f of the patch; the
    oracle rasterises each box at the image's own pixels and counts per patch. The centre's patch is
    always among them (the scenes' objects are bigger than half a patch)."""
    for s in make_samples("multi_image_needle", 6, seed=4, style="plain"):
        centre, cover = patch_labels(s), patch_labels(s, 0.2)
        for m, objs in enumerate(s.meta["objects"]):
            W = s.images[m].width
            want = {t: [NONE[t]] * (G * G) for t in ("colour", "shape")}
            for o in objs:
                x0, y0, x1, y1 = o["box"]
                yy, xx = np.mgrid[0:W, 0:W]
                box = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
                frac = box.reshape(G, W // G, G, W // G).mean(axis=(1, 3))
                col, shp = o["type"].split(" ")
                for p in np.flatnonzero(frac.ravel() >= 0.2 - 1e-9):
                    want["colour"][p] = _COLOURS.index(col)
                    want["shape"][p] = _SHAPES.index(shp)
            assert {t: cover[m][t] for t in want} == want
            for t in ("colour", "shape"):  # every centre label survives
                assert all(cover[m][t][p] == v for p, v in enumerate(centre[m][t]) if v != NONE[t])
            assert sum(v != NONE["colour"] for v in cover[m]["colour"]) > len(objs)
