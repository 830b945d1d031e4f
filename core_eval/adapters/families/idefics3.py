"""Idefics3: longest-edge resize, optional image splitting + global image, pixel shuffle; causal mask."""

from __future__ import annotations

import math

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import ImageContext, RegionRule, grid_cells, size_get, square_side, tile_cells

IDEFICS3_IMAGE, IDEFICS3_PATCH, IDEFICS3_SCALE = 64, 8, 2  # tiny recipe: 64 patches / 2**2 = 16 tokens


_IDEFICS3_MAX_SIDE = 4096  # transformers' MAX_IMAGE_SIZE for Idefics3 / SmolVLM


def _idefics3_resize(h: int, w: int, longest: int) -> tuple[int, int]:
    """Idefics3ImageProcessor.resize with ``longest_edge``: even short side, capped at 4096."""
    aspect = w / h
    if w >= h:
        w, h = longest, int(longest / aspect)
        h += h % 2
    else:
        h, w = longest, int(longest * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > _IDEFICS3_MAX_SIDE:
        w, h = _IDEFICS3_MAX_SIDE, int(_IDEFICS3_MAX_SIDE / aspect)
    elif h > w and h > _IDEFICS3_MAX_SIDE:
        h, w = _IDEFICS3_MAX_SIDE, int(_IDEFICS3_MAX_SIDE * aspect)
    return max(h, 1), max(w, 1)


def _idefics3_rects(ctx: ImageContext) -> torch.Tensor:
    """Idefics3 / SmolVLM: longest-edge resize, optional splitting into tiles + global image.

    Without splitting the (resized) image is squashed to ``max_image_size`` square: one frame.
    With ``do_image_splitting`` it is resized to multiples ``rows x cols`` of ``max_image_size``
    (``resize_for_vision_encoder``) and, when larger than one tile, split into tiles (row-major),
    followed by the global image (the whole image squashed to one tile). Every frame gives a
    row-major ``n x n`` grid of tokens, ``n^2 = image_seq_len`` (pixel shuffle keeps row-major
    order). All steps are full-image scalings, so tile ``(r, c)`` covers
    ``[c W / cols, (c + 1) W / cols) x [r H / rows, ...)``.
    """
    n = square_side(ctx.processor.image_seq_len, "image_seq_len")
    tile = int(size_get(ctx.setting("max_image_size"), "longest_edge"))
    h, w = ctx.height, ctx.width
    if ctx.setting("do_resize"):
        size = ctx.setting("size")
        if size_get(size, "longest_edge"):
            h, w = _idefics3_resize(h, w, int(size_get(size, "longest_edge")))
        elif size_get(size, "height") and size_get(size, "width"):
            h, w = size_get(size, "height"), size_get(size, "width")
    whole = grid_cells(0, 0, ctx.width, ctx.height, n, n)
    if not ctx.setting("do_image_splitting"):
        return whole
    aspect = w / h  # resize_for_vision_encoder
    if w >= h:
        w2 = math.ceil(w / tile) * tile
        h2 = math.ceil(int(w2 / aspect) / tile) * tile
    else:
        h2 = math.ceil(h / tile) * tile
        w2 = math.ceil(int(h2 * aspect) / tile) * tile
    if h2 <= tile and w2 <= tile:
        return whole
    rows, cols = math.ceil(h2 / tile), math.ceil(w2 / tile)
    return torch.cat([tile_cells(ctx.width, ctx.height, rows, cols, n), whole])


IDEFICS3_REGION = RegionRule("longest-edge resize -> [tiles row-major +] global image, pixel shuffle", _idefics3_rects)
IDEFICS3_REQUIRES = ("config.image_token_id", "processor.image_seq_len", "processor.image_processor.max_image_size")


def _tiny(p):
    """Idefics3: 64 px, patch 8, pixel shuffle 2 -> 16 tokens, no splitting; Llama LM."""
    from core_eval.testing.recipe import IDEFICS3_TEMPLATE, build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = build_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<fake_token_around_image>", "<image>",
         "<end_of_utterance>", "<global-img>", *rows],
        bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>", add_bos=True,
        chat_template=IDEFICS3_TEMPLATE,
    )
    n_tokens = (IDEFICS3_IMAGE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE**2
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": IDEFICS3_IMAGE}, max_image_size={"longest_edge": IDEFICS3_IMAGE},
        do_image_splitting=False,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=n_tokens,
                                  chat_template=IDEFICS3_TEMPLATE)
    text = LlamaConfig(**lm_kwargs(p["lm"], tok, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>"))
    vision = Idefics3VisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=IDEFICS3_IMAGE,
                                  patch_size=IDEFICS3_PATCH)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=IDEFICS3_SCALE,
                            image_token_id=token_ids(tok, "<image>")[0], pad_token_id=token_ids(tok, "<pad>")[0])
    return config, processor, token_ids(tok, "<end_of_utterance>", "<|end_of_text|>")


FAMILY = Family(
    name="idefics3", model_types=("idefics3",), layers="model.text_model.layers", vision="model.vision_model",
    notes="image splitting + pixel shuffle", region=IDEFICS3_REGION, requires=IDEFICS3_REQUIRES,
    tiny=(TinyRecipe("idefics3", _tiny, "Idefics3ForConditionalGeneration", gqa=False, image_tokens=16),),
)
