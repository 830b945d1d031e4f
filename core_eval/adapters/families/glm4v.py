"""GLM-4.1V (``glm4v``): Qwen2-VL-like dynamic resolution (its own smart_resize), 2x2 patch merge by a
strided conv, 3-D RoPE (partial rotary), causal mask; video frames reuse the image token.

LM facts that matter for head interventions (``modeling_glm4v.py``): separate ``q_proj`` / ``k_proj``
/ ``v_proj`` (with bias) and ``o_proj`` (no bias) Linear layers at ``model.language_model.layers[i]
.self_attn``; ``head_dim = hidden_size // num_attention_heads``; RoPE rotates the first
``partial_rotary_factor * head_dim`` channels of every head the same way, so whole-head row / column
permutations (hybrid sparse) are exact. The decoder layer applies an RMSNorm to the attention output
*after* ``o_proj`` (``post_self_attn_layernorm``): zeroing a head's slice of the ``o_proj`` input is
still exactly the ``zero`` ablation, but a head's effect on the residual is not additive.
"""

from __future__ import annotations

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.qwen2_vl import grid_video_rects
from core_eval.adapters.regions import (
    ImageContext, RegionRule, VideoContext, batch_output, grid_cells, image_token_id_of, size_get,
)

GLM_PATCH, GLM_MERGE, GLM_TEMPORAL = 14, 2, 2
# tiny recipe: smart_resize compares temporal_patch_size * h * w (2 frames) with these bounds, so an
# image gets 1..16 tokens of 28 x 28 px (112 x 84 -> 4 x 3 = 12)
GLM_MIN_PIXELS, GLM_MAX_PIXELS = GLM_TEMPORAL * 28 * 28, GLM_TEMPORAL * 112 * 112


def _glm4v_rects(ctx: ImageContext) -> torch.Tensor:
    """GLM-4.1V: ``Glm4vImageProcessor`` resizes the whole image with GLM's ``smart_resize`` (factor
    ``patch_size * merge_size``; the pixel bounds apply to ``temporal_patch_size`` frames) to a
    ``(1, h, w)`` patch grid; ``patchify`` lays patches out in ``merge_size x merge_size`` blocks and the
    vision tower's ``downsample`` conv turns each block into one token, row-major over the merged grid
    ``(h / m, w / m)``. The grid is read from ``image_grid_thw`` (row ``index``); without it, it is
    recomputed with GLM's ``smart_resize``. Token ``(r, c)`` covers ``[c W / cols, (c + 1) W / cols) x
    [r H / rows, (r + 1) H / rows)`` of the original image.
    """
    m = int(ctx.setting("merge_size"))
    grid = batch_output(ctx.outputs, "image_grid_thw")
    if grid is not None:
        t, gh, gw = (int(v) for v in grid[ctx.index])
    else:
        from transformers.models.glm4v.image_processing_glm4v import smart_resize

        patch, tp, size = int(ctx.setting("patch_size")), int(ctx.setting("temporal_patch_size")), ctx.setting("size")
        rh, rw = smart_resize(num_frames=tp, height=ctx.height, width=ctx.width, temporal_factor=tp, factor=patch * m,
                              min_pixels=size_get(size, "shortest_edge"), max_pixels=size_get(size, "longest_edge"))
        t, gh, gw = 1, rh // patch, rw // patch
    return grid_cells(0, 0, ctx.width, ctx.height, gh // m, gw // m).repeat(t, 1)


def _glm4v_video_rects(ctx: VideoContext) -> torch.Tensor:
    """GLM-4.1V videos: ``Glm4vVideoProcessor`` resizes every frame with GLM's ``smart_resize`` and
    ``patchify`` groups ``temporal_patch_size`` frames per step (padding the last by repeating the last
    frame), as Qwen (:func:`~core_eval.adapters.families.qwen2_vl.grid_video_rects`); the model's
    ``get_video_features`` runs each step as a ``(1, h, w)`` image through the tower. The processor writes
    each step as ``<|begin_of_image|>`` + image tokens + ``<|end_of_image|>`` + its integer timestamp."""
    return grid_video_rects(ctx, "glm4v")


#: GLM-4.1V / GLM-4.5V region rule. Video frames are written with the image token too
#: (``<|begin_of_image|><|image|>...<|end_of_image|>`` per temporal patch inside ``<|begin_of_video|>``), so
#: the image token marks every visual position; there is no separate video token in the LM sequence. The
#: model fills *every* image-token position with the video features when it gets a video, so a prompt
#: may not hold images and videos together.
GLM4V_REGION = RegionRule("glm4v smart_resize -> image_grid_thw -> 2x2 downsampled blocks, row-major; videos: "
                          "per temporal patch of 2 frames, the same blocks, on the image token", _glm4v_rects,
                          video_rects=_glm4v_video_rects, video_token=image_token_id_of,
                          videos_with_images=False)
GLM4V_REQUIRES = ("config.image_token_id", "config.vision_config.spatial_merge_size",
                  "processor.image_processor.merge_size", "processor.image_processor.patch_size",
                  "processor.image_processor.temporal_patch_size")

_GLM_SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|image|>", "<|video|>",
]


def tiny_glm4v(p, moe: bool = False):
    """GLM-4.1V (or GLM-4.5V with ``moe``): patch 14, merge 2, 2 temporal patches, 1..16 tokens per image;
    LM with partial rotary (half of each head) and M-RoPE sections; MoE: 4 tiny routed experts (top 2) and
    one shared expert from layer 1 on."""
    from core_eval.testing._tokenizer import GLM4V_TEMPLATE
    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, mrope_section, token_ids
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    if moe:
        from transformers import Glm4vMoeConfig as Cfg
        from transformers.models.glm4v_moe.configuration_glm4v_moe import Glm4vMoeTextConfig as TextCfg
        from transformers.models.glm4v_moe.configuration_glm4v_moe import Glm4vMoeVisionConfig as VisCfg
    else:
        from transformers import Glm4vConfig as Cfg
        from transformers.models.glm4v.configuration_glm4v import Glm4vTextConfig as TextCfg
        from transformers.models.glm4v.configuration_glm4v import Glm4vVisionConfig as VisCfg

    eos = ("<|endoftext|>", "<|user|>", "<|observation|>")  # as GLM-4.1V's generation_config
    tok = build_tokenizer(_GLM_SPECIALS, bos=None, eos="<|endoftext|>", pad="<|endoftext|>",
                          chat_template=GLM4V_TEMPLATE)
    geometry = dict(patch_size=GLM_PATCH, merge_size=GLM_MERGE, temporal_patch_size=GLM_TEMPORAL)
    size = {"shortest_edge": GLM_MIN_PIXELS, "longest_edge": GLM_MAX_PIXELS}
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(size=size, **geometry),
        tokenizer=tok,
        video_processor=Glm4vVideoProcessor(size=dict(size), max_image_size={"longest_edge": GLM_MAX_PIXELS},
                                            **geometry),
        chat_template=GLM4V_TEMPLATE,
    )
    lm = p["lm"]
    rotary = lm["head_dim"] // 2  # partial_rotary_factor 0.5, as the real checkpoints
    text_kw = lm_kwargs(lm, tok, bos=None, eos="<|endoftext|>", pad="<|endoftext|>", head_dim=False)
    text_kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5,
                                  "mrope_section": mrope_section(rotary)}
    if moe:
        text_kw.update(moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                       first_k_dense_replace=1, n_group=1, topk_group=1, attention_bias=True)
    text = TextCfg(**text_kw)
    vision = VisCfg(depth=p["vision_layers"], hidden_size=32, num_heads=2, intermediate_size=64, image_size=112,
                    out_hidden_size=lm["hidden_size"], patch_size=GLM_PATCH, spatial_merge_size=GLM_MERGE,
                    temporal_patch_size=GLM_TEMPORAL)
    ids = dict(zip(("image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id",
                    "video_start_token_id", "video_end_token_id"),
                   token_ids(tok, "<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>",
                             "<|begin_of_video|>", "<|end_of_video|>")))
    config = Cfg(text_config=text, vision_config=vision, **ids)
    return config, processor, token_ids(tok, *eos)


FAMILY = Family(
    name="glm4v", model_types=("glm4v",), layers="model.language_model.layers", vision="model.visual",
    notes="dynamic resolution (GLM smart_resize), 2x2 conv merge, 3-D RoPE, post-o_proj norm; video frames use the image token",
    region=GLM4V_REGION, requires=GLM4V_REQUIRES,
    tiny=(TinyRecipe("glm4v", tiny_glm4v, "Glm4vForConditionalGeneration", image_tokens=12),),
)
