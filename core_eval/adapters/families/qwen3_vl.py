"""Qwen3-VL (dense): Qwen2-VL's merge geometry at patch 16, interleaved M-RoPE, a Qwen3 LM (q_norm /
k_norm per head), causal mask, and DeepStack.

Geometry. ``Qwen3VLProcessor`` runs ``Qwen2VLImageProcessor`` (patch 16, merge 2 in the real
checkpoints): ``smart_resize`` of the whole image to multiples of ``patch * merge`` -> an
``(t, h, w)`` patch grid (``image_grid_thw``), pixel rows already grouped per ``merge x merge``
block, which the vision merger concatenates into one LM token. So the region rule is Qwen2-VL's
(:data:`~core_eval.adapters.families.qwen2_vl.QWEN_REGION`), read from the processor's own
``patch_size`` / ``merge_size``; ``tests/test_regions.py`` checks it pixel by pixel through this
model's own patch embedding and merger. Videos (``Qwen3VLVideoProcessor``): the processor expands
the template's ``<|video_pad|>`` into, per temporal patch (2 frames), a text timestamp ``<t seconds>``
then ``<|vision_start|>`` + that patch's pads + ``<|vision_end|>``; the ``<|video_pad|>`` tokens count as
visual, the timestamps are text. The region rule maps images only.

DeepStack. The vision tower also returns features from some of its intermediate layers
(``vision_config.deepstack_visual_indexes``); ``Qwen3VLTextModel`` *adds* the ``k``-th of them to the
hidden states at the visual positions right after LM decoder layer ``k`` (``_deepstack_process``),
outside attention. Image information thus enters the LM's residual stream at the visual positions
twice over: as the image embeddings (layer-0 input) and again after the first few layers. What this
means (measured on the tiny models in ``tests/test_family_qwen3_vl.py``):

- ``visual_knockout`` blocks attention to visual keys only; the visual positions' own hidden states
  are untouched by it and stay image-dependent (embeddings + DeepStack), so a knockout is not a
  removal of the image from the LM. A text position, though, still receives image information only
  by attending to visual positions: DeepStack adds nothing at text positions. Knocking out every
  head of every layer therefore makes the answer logits exactly independent of the image (as in
  LLaVA-style families); a feature added after layer ``k`` reaches the answer only through heads of
  layers ``> k`` (knocking out all heads of layers ``>= 1`` leaves the answer image-dependent but
  blind to DeepStack). Heads that are not knocked out read visual states that DeepStack has
  enriched, so cutting the heads of the first layers does not cut the DeepStack route.
- RAM keeps its definition (attention mass on the target region's visual key positions); what those
  keys hold after layer ``k`` includes the DeepStack features, which is part of what the heads read.
- ``zero`` / ``mean`` / ``uniform`` act on ``o_proj`` inputs / queries as everywhere; DeepStack is not
  a head and is never ablated.

The LM's attention is Qwen3's: q/k/v/o projections with a per-head RMSNorm (``q_norm`` /
``k_norm``, one weight vector of size ``head_dim`` shared by all heads), so the hybrid-sparse
load-time permutation of head rows commutes with it and stays exact.
"""

from __future__ import annotations

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.qwen2_vl import _QWEN_SPECIALS, QWEN_REGION, QWEN_REQUIRES, qwen_vl_config

QWEN3_PATCH, QWEN3_MERGE = 16, 2  # as the real checkpoints; tiny: tokens = (H/32)*(W/32)
QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS = 32 * 32, 128 * 128  # tiny recipe: 1..16 tokens per image
QWEN3_VL_NOTES = ("dynamic resolution (patch 16), 2x2 merge, interleaved M-RoPE; DeepStack adds vision features to "
                  "visual positions of early LM layers (untouched by visual_knockout; text reads them only by attention)")


def mrope_interleaved_section(head_dim: int) -> list[int]:
    """Qwen3-VL's ``[24, 20, 20]`` (head_dim 128, interleaved T/H/W) scaled down to ``head_dim``."""
    half = head_dim // 2
    hw = max(1, half * 20 // 64)
    return [half - 2 * hw, hw, hw]


def tiny_qwen3_vl(p, moe: bool):
    """Qwen3-VL / Qwen3-VL-MoE: patch 16, merge 2, 32..128 px (1..16 tokens per image), DeepStack from
    vision layers ``0`` and ``depth - 1`` into LM layers 0 and 1; MoE: 4 experts, top-2, every layer."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from core_eval.testing._tokenizer import QWEN3_VL_TEMPLATE
    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, token_ids

    if moe:
        from transformers import Qwen3VLMoeConfig as Cfg
        from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig as TextCfg
        from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeVisionConfig as VisCfg
    else:
        from transformers import Qwen3VLConfig as Cfg
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig as TextCfg
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig as VisCfg

    tok = build_tokenizer(
        _QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN3_VL_TEMPLATE
    )
    geometry = dict(patch_size=QWEN3_PATCH, merge_size=QWEN3_MERGE, temporal_patch_size=2,
                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    size = {"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry),
        tokenizer=tok,
        video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": 4 * QWEN3_MAX_PIXELS},
                                              cap_pixels_per_frame=True, max_video_tokens=16, **geometry),
        chat_template=QWEN3_VL_TEMPLATE,
    )
    lm = p["lm"]
    moe_kw = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                  mlp_only_layers=[]) if moe else {}
    text = TextCfg(
        **lm_kwargs(lm, tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>"),
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_interleaved": True,
                         "mrope_section": mrope_interleaved_section(lm["head_dim"])},
        **moe_kw,
    )
    depth = p["vision_layers"]
    vision = VisCfg(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN3_PATCH,
                    spatial_merge_size=QWEN3_MERGE, temporal_patch_size=2, out_hidden_size=lm["hidden_size"],
                    num_position_embeddings=64, deepstack_visual_indexes=sorted({0, depth - 1}))
    return qwen_vl_config(Cfg, tok, text, vision), processor, token_ids(tok, "<|im_end|>", "<|endoftext|>")


FAMILY = Family(
    name="qwen3_vl", model_types=("qwen3_vl",), layers="model.language_model.layers", vision="model.visual",
    video_token_fields=("video_token_id",), notes=QWEN3_VL_NOTES,
    region=QWEN_REGION, requires=QWEN_REQUIRES,
    tiny=(TinyRecipe("qwen3_vl", lambda p: tiny_qwen3_vl(p, moe=False), "Qwen3VLForConditionalGeneration",
                     image_tokens=12),),
)
