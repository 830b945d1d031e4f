"""Idefics2 (perceiver resampler): the region rule does what its module docstring says.

Every latent token maps to the whole view it summarises: without image splitting a box selects all of
its image's latents (RAM = visual mass, lift 1); with splitting it selects the latents of every crop it
overlaps (crops cut at ``W // 2``, ``H // 2`` of the original image) plus the whole image's. The
token-level pixel check (``test_regions.test_tokens_see_their_pixels``, splitting on) runs in the matrix;
here it also runs without splitting and on odd sizes, from the model's own perceiver mask.
"""

from __future__ import annotations

import pytest
import torch
from test_regions import model_token_ramps, ramp_image, sample

from core_eval.adapters import registered_families
from core_eval.adapters.regions import RegionMappingError, image_token_rects, region_masks, sample_region_masks
from core_eval.probes import Box, generate
from core_eval.prompting import encode
from core_eval.scoring.capture import RamCapture
from core_eval.scoring.ram import ScoreConfig, score_batch
from core_eval.testing import load_processor, load_tiny

VIEWS = 5  # 4 crops + the whole image


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    model, _ = load_tiny(tiny_dir("idefics2"))
    return model, tiny_dir("idefics2")


def processor(d, split=True):
    p = load_processor(d)
    p.image_processor.do_image_splitting = split
    return p


def blocks(mask_row, n):
    """Which of the image's views (blocks of n consecutive visual tokens) are selected: all or none each."""
    sel = mask_row.view(-1, n)
    assert (sel.all(1) | ~sel.any(1)).all(), "a view's latents are selected only together"
    return sel.all(1).nonzero().flatten().tolist()


def test_the_family_says_what_it_does():
    fam = registered_families()["idefics2"]
    assert "perceiver" in fam.notes and "visual mass" in fam.notes
    assert "no patch grid" in fam.region.summary
    import core_eval.adapters.families.idefics2 as mod

    assert "RAM equals visual mass" in mod.__doc__ and "quadrant" in mod.__doc__


def test_rects_are_the_views(tiny):
    _, d = tiny
    p = processor(d)
    n = p.image_seq_len
    for w, h in [(150, 100), (151, 101), (90, 130)]:
        r = image_token_rects(p, (w, h))
        assert r.shape == (VIEWS * n, 4)
        mw, mh = w // 2, h // 2
        views = [(0, 0, mw, mh), (mw, 0, w, mh), (0, mh, mw, h), (mw, mh, w, h), (0, 0, w, h)]
        assert torch.equal(r, torch.tensor(views, dtype=torch.float64).repeat_interleave(n, 0))
    r = image_token_rects(processor(d, split=False), (151, 101))
    assert torch.equal(r, torch.tensor([[0, 0, 151, 101]], dtype=torch.float64).expand(n, 4))


def test_without_splitting_any_box_selects_the_whole_image(tiny):
    _, d = tiny
    p = processor(d, split=False)
    im0, im1 = ramp_image(150, 100), ramp_image(90, 130)
    s = sample([im0, im1], boxes=[Box(1, 0, 0, 3, 3)])  # a 3x3 px corner of image 1
    inputs = encode(p, [s])
    m = sample_region_masks(p, inputs, [s])
    vis = m.visual[0].nonzero().flatten()
    assert len(vis) == 2 * p.image_seq_len
    assert torch.equal(m.target[0, vis], torch.arange(len(vis)) >= p.image_seq_len)  # image 1's latents, all


def test_with_splitting_a_box_selects_its_crops_and_the_whole_image(tiny):
    _, d = tiny
    p = processor(d)
    n = p.image_seq_len
    w, h = 150, 100
    s = sample([ramp_image(w, h)])
    inputs = encode(p, [s])
    vis = sample_region_masks(p, inputs, [s]).visual[0]
    cases = {
        (10, 10, 20, 20): [0, 4],  # top-left crop only
        (100, 60, 140, 90): [3, 4],  # bottom-right
        (80, 10, 140, 90): [1, 3, 4],  # right half
        (70, 45, 80, 55): [0, 1, 2, 3, 4],  # on the centre: every crop
        (0, 0, w, h): [0, 1, 2, 3, 4],
        (75, 50, 76, 51): [3, 4],  # the midpoints belong to the right / bottom crops (W // 2, H // 2)
        (74, 49, 75, 50): [0, 4],
    }
    for (x0, y0, x1, y1), views in cases.items():
        m = region_masks(p, inputs, [s.images], [[Box(0, x0, y0, x1, y1)]])
        assert blocks(m.target[0][vis], n) == views, (x0, y0, x1, y1)


def test_ram_equals_visual_mass_without_splitting_and_not_with_it(tiny):
    model, d = tiny
    samples = generate("grid_needle", 2, seed=1, grid=4, image_size=96)
    cfg = ScoreConfig(n=2, batch_size=2)
    for split in (False, True):
        p = processor(d, split=split)
        cap = RamCapture(model)
        with cap:
            out = score_batch(model, p, samples, cfg, cap)
        if not split:
            assert torch.equal(out["region_frac"], torch.ones(2))
            torch.testing.assert_close(out["ram"], out["visual_mass"], atol=0, rtol=0)
        else:  # one grid cell lies in one quadrant: its crop + the whole image = 2 of 5 views
            torch.testing.assert_close(out["region_frac"], torch.full((2,), 2 / VIEWS))
            assert (out["ram"] <= out["visual_mass"] + 1e-6).all() and (out["ram"] < out["visual_mass"]).any()


@pytest.mark.parametrize("split", [False, True])
def test_latents_see_their_view(tiny, split):
    """The mean ramp of the patches each latent may read (the model's own perceiver mask) is the centre of
    its rectangle: the rule maps latents onto the views the model really feeds them."""
    model, d = tiny
    p = processor(d, split=split)
    sizes = [(151, 101), (90, 130), (224, 70), (40, 300)]
    samples = [sample([ramp_image(*wh)], "q" * (i + 1)) for i, wh in enumerate(sizes)]
    inputs = encode(p, samples)
    ref = model_token_ramps("idefics2", model, p, inputs)
    for b, (w, h) in enumerate(sizes):
        r = image_token_rects(p, (w, h))
        centre = torch.stack([(r[:, 0] + r[:, 2]) / (2 * w), (r[:, 1] + r[:, 3]) / (2 * h)], dim=1)
        extent = torch.stack([(r[:, 2] - r[:, 0]) / w, (r[:, 3] - r[:, 1]) / h], dim=1)
        # tolerance: part of a patch at the right / bottom edge of the resized view (not read by the tower)
        assert ((ref[b] - centre).abs() <= 0.1 * extent + 0.01).all(), (split, (w, h))


def test_call_time_splitting_that_disagrees_is_refused(tiny):
    _, d = tiny
    p = processor(d)
    with pytest.raises(RegionMappingError, match="expands each <image> by its image_processor.do_image_splitting"):
        image_token_rects(p, (150, 100), images_kwargs={"do_image_splitting": False})
    assert len(image_token_rects(p, (150, 100), images_kwargs={"do_image_splitting": True})) == VIEWS * p.image_seq_len
