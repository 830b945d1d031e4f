"""SmolVLM: the real tiny SmolVLM (SmolVLMProcessor, image splitting on) under the Idefics3 region rule.

The matrix covers the rest (pixel ramp check through the model's own pixel shuffle, whole-image,
multi-image and padded-batch masks); here: one token's cell maps to exactly one token in its tile and
one in the global image, and the num2words requirement is declared.
"""

from __future__ import annotations

from pathlib import Path

from test_regions import sample

from core_eval.adapters.regions import region_masks, sample_region_masks
from core_eval.probes import Box
from core_eval.prompting import encode
from core_eval.testing import load_processor, synthetic_image


def test_one_cell_box_maps_to_its_tile_token_and_one_global_token(tiny_dir):
    p = load_processor(tiny_dir("smolvlm"))
    tile = p.image_processor.max_image_size["longest_edge"]
    k = p.image_processor.size["longest_edge"] // tile  # a k*tile square image: k x k tiles, no resampling
    n = int(round(p.image_seq_len**0.5))
    cell, side = tile // n, k * tile
    s = sample([synthetic_image(0, (side, side))])
    inputs = encode(p, [s])
    vis = sample_region_masks(p, inputs, [s]).visual[0].nonzero().flatten().tolist()
    assert len(vis) == (k * k + 1) * n * n
    g = side // n  # global image cells (the whole image squashed to one tile)
    for y in range(0, side, cell):
        for x in range(0, side, cell):
            m = region_masks(p, inputs, [s.images], [[Box(0, x, y, x + cell, y + cell)]])
            t = (y // tile) * k + x // tile
            in_tile = ((y % tile) // cell) * n + (x % tile) // cell
            glob = (y // g) * n + x // g
            assert m.target[0].nonzero().flatten().tolist() == [vis[t * n * n + in_tile], vis[k * k * n * n + glob]]


def test_num2words_is_declared():
    import core_eval.adapters.families.smolvlm as mod

    assert "num2words" in mod.__doc__
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    test_extra = next(line for line in pyproject.splitlines() if line.startswith("test = ["))
    assert '"num2words"' in test_extra
