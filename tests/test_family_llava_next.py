"""LLaVA-NeXT and LLaVA-OneVision (``core_eval/adapters/families/llava_next.py``, ``llava_onevision.py``):
anyres geometry beyond the shared matrix (``test_regions.py`` runs the pixel-ramp check on single images).

Tiny recipes: 24 px frames, patch 8 (3x3 tokens per frame), pinpoints (h, w) 24x48, 48x24, 48x48;
OneVision with ``anyres_max_3`` (an unpadded grid of more than 27 tokens is downsampled).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_regions import ANYRES, clipped_ramp, encode_kw, model_token_ramps, ramp_image, sample

from core_eval.adapters.regions import RegionMappingError, image_token_rects, region_masks, token_rects
from core_eval.probes import Box
from core_eval.prompting import encode
from core_eval.testing.inputs import load_processor, load_tiny, synthetic_image

_CACHE: dict = {}


@pytest.fixture
def tiny(tiny_dir):
    """``tiny(family) -> (model, processor)``, loaded once; copy the processor before changing it."""

    def get(family):
        if family not in _CACHE:
            _CACHE[family] = load_tiny(tiny_dir(family))
        return _CACHE[family]

    return get


def image_ids(p, inputs):
    return inputs["input_ids"] == p.image_token_id


def positions(mask_row):
    return mask_row.nonzero().flatten().tolist()


# --------------------------------------------------------------------------- token counts and layout
@pytest.mark.parametrize("family,size,count", [
    # 112x84 -> 48x48 canvas (2x2 tiles), 6x6 grid unpadded to 4x6: 9 base + 4 * (6 + 1)
    ("llava_next", (112, 84), 37), ("llava_onevision", (112, 84), 37),
    # a square image: 6x6 grid, no unpadding; OneVision downsamples 36 > 3 * 9 tokens to 5x5
    ("llava_next", (150, 150), 9 + 6 * 7), ("llava_onevision", (150, 150), 9 + 5 * 6),
    # 224x70 -> 24x48 canvas (1x2 tiles), 3x6 grid unpadded to one row
    ("llava_next", (224, 70), 9 + 1 * 7),
])
def test_token_counts(tiny, family, size, count):
    model, p = tiny(family)
    s = sample([synthetic_image(0, size)])
    inputs = encode(p, [s])
    assert int(image_ids(p, inputs).sum()) == count == len(image_token_rects(p, size, outputs=inputs))
    with torch.no_grad():  # the model consumes exactly that many
        model(**inputs)


@pytest.mark.parametrize("family", ANYRES)
def test_newline_tokens_end_every_high_res_row_and_are_never_targets(tiny, family):
    _, p = tiny(family)
    s = sample([synthetic_image(0)])  # 112x84: base 3x3, then 4 rows of 6 tokens + newline
    inputs = encode(p, [s])
    r = token_rects(p, inputs, [s.images]).rects[0][image_ids(p, inputs)[0]]
    newline = torch.isnan(r).any(1)
    assert positions(newline) == [9 + 7 * k + 6 for k in range(4)]
    m = region_masks(p, inputs, [s.images], [[Box(0, 0, 0, 112, 84)]])
    assert positions(m.visual[0] & ~m.target[0]) == [positions(m.visual[0])[i] for i in positions(newline)]


@pytest.mark.parametrize("family", ANYRES)
def test_box_on_one_cell_hits_one_high_res_token_and_its_base_token(tiny, family):
    """48x48 image = the 48x48 pinpoint: no resize, no padding; high-res cells are 8 px, base cells 16 px."""
    _, p = tiny(family)
    if family == "llava_onevision":  # keep the 6x6 grid (36 tokens = 4 frames' worth)
        p = copy.deepcopy(p)
        p.vision_aspect_ratio = "anyres_max_4"
    s = sample([synthetic_image(0, (48, 48))])
    inputs = encode(p, [s])
    vis = positions(image_ids(p, inputs)[0])
    assert len(vis) == 9 + 6 * 7
    for r in range(6):
        for c in range(6):
            m = region_masks(p, inputs, [s.images], [[Box(0, 8 * c + 3, 8 * r + 3, 8 * c + 5, 8 * r + 5)]])
            assert positions(m.target[0]) == [vis[(r // 2) * 3 + c // 2], vis[9 + 7 * r + c]], (r, c)


def test_onevision_downsampled_cells_tile_the_unpadded_grid(tiny):
    """150x150 -> 6x6 grid over the whole image, downsampled to 5x5: cells of 30 px."""
    _, p = tiny("llava_onevision")
    r = image_token_rects(p, (150, 150))
    high = r[9:].view(5, 6, 4)
    assert torch.isnan(high[:, 5]).all()
    edges = torch.arange(6, dtype=torch.float64) * 30
    torch.testing.assert_close(high[:, :5, 0], edges[:5].expand(5, 5))
    torch.testing.assert_close(high[:, :5, 3], edges[1:, None].expand(5, 5))


# --------------------------------------------------------------------------- several images in one prompt
@pytest.mark.parametrize("family", ANYRES)
def test_multi_image_tokens_see_their_pixels(tiny, family):
    """Two and three images per prompt, grouped by the model's own ``pack_image_features``; OneVision lays
    each out as a padded square (fill ``image_mean``) with one newline, LLaVA-NeXT tiles each as usual."""
    model, p = tiny(family)
    groups = [[(150, 100), (90, 130)], [(60, 200), (224, 70), (112, 84)]]
    samples = [sample([ramp_image(*wh) for wh in g], "q" * (i + 1)) for i, g in enumerate(groups)]
    inputs = encode_kw(p, samples)
    ref = model_token_ramps(family, model, p, inputs)
    tr = token_rects(p, inputs, [s.images for s in samples])
    fill = (torch.tensor(p.image_processor.image_mean[:2], dtype=torch.float64) if family == "llava_onevision"
            else torch.zeros(2, dtype=torch.float64))
    for b, sizes in enumerate(groups):
        sel = image_ids(p, inputs)[b]
        r, which = tr.rects[b, sel], tr.image[b, sel]
        newline = torch.isnan(ref[b]).any(1)
        assert torch.equal(torch.isnan(r).any(1), newline)
        if family == "llava_onevision":  # base 3x3 + one newline per image
            assert len(r) == 10 * len(sizes) and positions(newline) == [10 * i + 9 for i in range(len(sizes))]
        for i, (w, h) in enumerate(sizes):
            k = (which == i) & ~newline
            exp = clipped_ramp(r[k], w, h, fill)
            extent = torch.stack([(r[k, 2] - r[k, 0]) / w, (r[k, 3] - r[k, 1]) / h], 1)
            assert ((ref[b][k] - exp).abs() <= 0.1 * extent + 0.02).all(), (family, b, i)


def test_onevision_without_batch_num_images_tiles_every_image(tiny):
    _, p = tiny("llava_onevision")
    one = encode(p, [sample([synthetic_image(0)])])
    torch.testing.assert_close(image_token_rects(p, (112, 84)), image_token_rects(p, (112, 84), outputs=one),
                               equal_nan=True, rtol=0, atol=0)
    two = encode(p, [sample([synthetic_image(0), synthetic_image(1)])])
    assert len(image_token_rects(p, (112, 84), outputs=two, index=1)) == 10
    assert len(image_token_rects(p, (112, 84), outputs={"batch_num_images": [2]}, index=1)) == 10
    with pytest.raises(RegionMappingError, match="beyond batch_num_images"):
        image_token_rects(p, (112, 84), outputs={"batch_num_images": [1]}, index=1)


def test_onevision_video_tokens_are_visual_and_unmapped(tiny):
    model, p = tiny("llava_onevision")
    frames = [np.random.default_rng(0).integers(0, 255, (4, 30, 40, 3), dtype=np.uint8)]
    inputs = p(text=["<|im_start|>user <video>\nWhat?<|im_end|>"], videos=frames, return_tensors="pt")
    tr = token_rects(p, inputs, [[]])
    n_video = int((inputs["input_ids"] == p.video_token_id).sum())
    assert n_video == 4 * 2 * 2 + 1 and int(tr.visual.sum()) == n_video  # pooled 2x2 per frame + newline
    assert torch.isnan(tr.rects).all()
    with torch.no_grad():
        model(**inputs)


# --------------------------------------------------------------------------- layouts the model cannot pack
def test_unpackable_layouts_raise(tiny):
    _, p = tiny("llava_next")
    full = copy.deepcopy(p)
    full.vision_feature_select_strategy = "full"  # the CLS stays: frames are no longer square grids
    with pytest.raises(RegionMappingError, match="llava_next: \\+1 extra token"):
        image_token_rects(full, (112, 84))
    _, p = tiny("llava_onevision")
    default = copy.deepcopy(p)
    default.vision_feature_select_strategy = "default"
    with pytest.raises(RegionMappingError, match="vision_feature_select_strategy='default'"):
        image_token_rects(default, (112, 84))
    odd = copy.deepcopy(p)
    odd.vision_aspect_ratio = "square"
    with pytest.raises(RegionMappingError, match="not 'anyres_max_N'"):
        image_token_rects(odd, (112, 84))


def test_processor_without_pinpoints_fails_before_weights_load(tiny_dir, tmp_path):
    from core_eval.adapters import family_for_config
    from core_eval.adapters.base import UnsupportedArchitectureError, check_requirements
    from transformers import AutoConfig

    for family in ANYRES:
        config = AutoConfig.from_pretrained(tiny_dir(family))
        p = copy.deepcopy(load_processor(tiny_dir(family)))
        p.image_processor.image_grid_pinpoints = None
        with pytest.raises(UnsupportedArchitectureError, match="image_grid_pinpoints"):
            check_requirements(family_for_config(config), config=config, processor=p)
