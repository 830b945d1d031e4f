"""Qwen2.5-VL: Qwen2-VL's merge geometry with a windowed vision tower; causal mask."""

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.qwen2_vl import QWEN_REGION, QWEN_REQUIRES, tiny_qwen_vl

FAMILY = Family(
    name="qwen2_5_vl", model_types=("qwen2_5_vl",), layers="model.language_model.layers", vision="model.visual",
    video_token_fields=("video_token_id",), notes="dynamic resolution, 2x2 patch merge, M-RoPE",
    region=QWEN_REGION, requires=QWEN_REQUIRES,
    tiny=(TinyRecipe("qwen2_5_vl", lambda p: tiny_qwen_vl(p, v25=True), "Qwen2_5_VLForConditionalGeneration",
                     image_tokens=12),),
)
