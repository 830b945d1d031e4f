"""LLaVA (1.5): CLIP tower, a fixed grid of visual tokens, Llama-style LM, causal mask."""

from __future__ import annotations

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import (
    ImageContext, RegionMappingError, RegionRule, batch_output, center_crop_offset, grid_cells, no_patch, resized_hw,
    size_get,
)

LLAVA_IMAGE, LLAVA_PATCH = 32, 8  # tiny recipe: 16 tokens (CLS dropped)


def _llava_rects(ctx: ImageContext) -> torch.Tensor:
    """LLaVA (CLIP-style image processor): [pad to square] -> resize -> [center crop] -> patch grid.

    Processed coordinate ``u`` (in the crop) is original ``(u + crop_offset) * W_padded / W_resized
    - pad_offset``. The grid is ``pixel_values.shape // patch_size`` (what ``LlavaProcessor``
    counts), row-major; ``num_additional_image_tokens`` (CLS) lead the block, minus the one
    ``vision_feature_select_strategy="default"`` drops, as no-patch tokens.
    """
    p, ip = ctx.processor, ctx.image_processor
    patch = getattr(p, "patch_size", None)
    if not patch:
        raise RegionMappingError("llava: the processor has no patch_size; cannot map patches to tokens")
    w, h, pad_x, pad_y = ctx.width, ctx.height, 0, 0
    if ctx.setting("do_pad") and hasattr(ip, "pad_to_square"):  # LlavaImageProcessor: pad, then resize
        side = max(w, h)
        pad_x, pad_y, w, h = (side - w) // 2, (side - h) // 2, side, side
    rh, rw = resized_hw(h, w, ctx.setting("size")) if ctx.setting("do_resize") else (h, w)
    if ctx.setting("do_center_crop"):
        crop = ctx.setting("crop_size")
        ch, cw = size_get(crop, "height"), size_get(crop, "width")
        off_y, off_x = center_crop_offset(rh, ch), center_crop_offset(rw, cw)
    else:
        ch, cw, off_y, off_x = rh, rw, 0, 0
    pv = batch_output(ctx.outputs, "pixel_values")
    if pv is not None and len(pv) > ctx.index:  # the processor counts tokens from this shape
        ch, cw = (int(d) for d in pv[ctx.index].shape[-2:])
    gh, gw = ch // patch, cw // patch
    sx, sy = w / rw, h / rh

    def ox(u):
        return (u + off_x) * sx - pad_x

    def oy(v):
        return (v + off_y) * sy - pad_y

    cells = grid_cells(ox(0), oy(0), ox(gw * patch), oy(gh * patch), gh, gw)
    extra = int(getattr(p, "num_additional_image_tokens", 0) or 0)
    if getattr(p, "vision_feature_select_strategy", None) == "default":
        extra -= 1
    if extra < 0:
        raise RegionMappingError(
            "llava: vision_feature_select_strategy='default' drops a CLS token but the processor's "
            "num_additional_image_tokens is 0"
        )
    return torch.cat([no_patch(extra), cells])


def _tiny(p):
    """LLaVA-1.5 layout: CLIP 32 px, patch 8 (16 tokens, CLS dropped), Llama LM."""
    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, token_ids, vision_kwargs, LLAVA_TEMPLATE
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    tok = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
        named={"image_token": "<image>"}, chat_template=LLAVA_TEMPLATE,
    )
    n_tokens = (LLAVA_IMAGE // LLAVA_PATCH) ** 2
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": LLAVA_IMAGE}, crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    text = LlamaConfig(**lm_kwargs(p["lm"], tok, bos="<s>", eos="</s>", pad="<pad>"))
    vision = CLIPVisionConfig(
        **vision_kwargs(layers=p["vision_layers"]), image_size=LLAVA_IMAGE, patch_size=LLAVA_PATCH, projection_dim=32
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=token_ids(tok, "<image>")[0],
        image_seq_length=n_tokens, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return config, processor, token_ids(tok, "</s>")


FAMILY = Family(
    name="llava", model_types=("llava",), layers="model.language_model.layers",
    notes="CLIP tower, fixed grid of visual tokens",
    region=RegionRule("[pad] -> resize -> center crop -> patch grid (CLS first if kept)", _llava_rects),
    requires=("config.image_token_id", "processor.patch_size"),
    tiny=(TinyRecipe("llava", _tiny, "LlavaForConditionalGeneration", gqa=False, image_tokens=16),),
)
