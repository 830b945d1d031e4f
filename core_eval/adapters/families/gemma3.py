"""Gemma 3: fixed 896 px grid pooled to 256 tokens, sliding-window layers, and an LM mask in which an
image's tokens attend to each other bidirectionally (``token_type_ids``)."""

from __future__ import annotations

import math

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import ImageContext, RegionRule, grid_cells, square_side

GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_MM_TOKENS = 64, 8, 16  # tiny recipe: 8x8 patches avg-pooled to 4x4


def _gemma3_pan_and_scan(ctx: ImageContext) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(x0, y0, x1, y1)`` of Gemma3ImageProcessor.pan_and_scan_batched (may be empty)."""
    w, h = ctx.width, ctx.height
    min_crop = int(ctx.setting("pan_and_scan_min_crop_size"))
    max_crops = int(ctx.setting("pan_and_scan_max_num_crops"))
    min_ratio = float(ctx.setting("pan_and_scan_min_ratio_to_activate"))
    if w >= h:
        if w / h < min_ratio:
            return []
        nw = min(int(math.floor(w / min_crop)), int(math.floor(w / h + 0.5)))
        nw, nh = min(max_crops, max(2, nw)), 1
    else:
        if h / w < min_ratio:
            return []
        nh = min(int(math.floor(h / min_crop)), int(math.floor(h / w + 0.5)))
        nh, nw = min(max_crops, max(2, nh)), 1
    cw, chh = int(math.ceil(w / nw)), int(math.ceil(h / nh))
    if min(cw, chh) < min_crop:
        return []
    return [(x, y, min(x + cw, w), min(y + chh, h)) for y in range(0, nh * chh, chh) for x in range(0, nw * cw, cw)]


def _gemma3_rects(ctx: ImageContext) -> torch.Tensor:
    """Gemma3: the whole image squashed to ``size`` (no aspect preservation) -> patch grid, average
    pooled to a row-major ``n x n`` grid, ``n^2 = image_seq_length``. With pan-and-scan
    (``do_pan_and_scan``), the full image comes first, then each crop (row-major), each resized the
    same way.
    """
    n = square_side(ctx.processor.image_seq_length, "image_seq_length")
    views = [(0, 0, ctx.width, ctx.height)]
    if ctx.setting("do_pan_and_scan"):
        views += _gemma3_pan_and_scan(ctx)
    return torch.cat([grid_cells(*v, n, n) for v in views])


def _gemma3_image_token(processor) -> int:
    # Gemma3Processor.image_token_id is the begin-of-image token; the expanded soft token is the tokenizer's.
    return int(processor.tokenizer.image_token_id)


def _tiny(p):
    """Gemma 3: 64 px, patch 8 -> 8x8 pooled to 4x4 = 16 tokens; every third LM layer full, the others sliding."""
    from core_eval.testing.recipe import GEMMA3_TEMPLATE, build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor, SiglipVisionConfig
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

    tok = build_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
         "<end_of_image>", "<image_soft_token>"],
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        chat_template=GEMMA3_TEMPLATE,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE}),
        tokenizer=tok, image_seq_length=GEMMA3_MM_TOKENS, chat_template=GEMMA3_TEMPLATE,
    )
    lm = p["lm"]
    n = lm["num_hidden_layers"]
    layer_types = p.get("layer_types")
    if layer_types is None:  # every third layer full; at least one full layer if n >= 2
        layer_types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(n)]
        if n >= 2 and "full_attention" not in layer_types:
            layer_types[-1] = "full_attention"
    text = Gemma3TextConfig(
        **lm_kwargs(lm, tok, bos="<bos>", eos="<eos>", pad="<pad>", tie=True),
        query_pre_attn_scalar=lm["head_dim"],
        sliding_window=p.get("sliding_window", 4096),
        layer_types=list(layer_types),
    )
    vision = SiglipVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=GEMMA3_IMAGE,
                                patch_size=GEMMA3_PATCH, vision_use_head=False)
    boi, eoi, img = token_ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=GEMMA3_MM_TOKENS,
                          boi_token_index=boi, eoi_token_index=eoi, image_token_index=img,
                          tie_word_embeddings=True)
    return config, processor, token_ids(tok, "<eos>", "<end_of_turn>")


FAMILY = Family(
    name="gemma3", model_types=("gemma3",), layers="model.language_model.layers",
    notes="fixed 896px grid pooled to 256 tokens; sliding-window layers; bidirectional image blocks",
    region=RegionRule("square resize -> pooled token grid [+ pan-and-scan crops]", _gemma3_rects,
                      image_token=_gemma3_image_token),
    attention_mask="bidirectional_image",
    requires=("config.image_token_id", "processor.image_seq_length", "processor.tokenizer.image_token_id"),
    tiny=(TinyRecipe("gemma3", _tiny, "Gemma3ForConditionalGeneration", image_tokens=16,
                     extra_overrides=("sliding_window", "layer_types")),),
)
