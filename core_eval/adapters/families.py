"""Built-in family entries. One entry per family; keep them small.

Layer paths are for the classes ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM``
return in transformers 5.x.
"""

from core_eval.adapters.base import Family, register_family

register_family(Family(
    name="llava", model_types=("llava",), layers="model.language_model.layers",
    notes="CLIP tower, fixed grid of visual tokens",
))
register_family(Family(
    name="qwen2_vl", model_types=("qwen2_vl",), layers="model.language_model.layers", vision="model.visual",
    video_token_fields=("video_token_id",), notes="dynamic resolution, 2x2 patch merge, M-RoPE",
))
register_family(Family(
    name="qwen2_5_vl", model_types=("qwen2_5_vl",), layers="model.language_model.layers", vision="model.visual",
    video_token_fields=("video_token_id",), notes="dynamic resolution, 2x2 patch merge, M-RoPE",
))
register_family(Family(
    name="idefics3", model_types=("idefics3",), layers="model.text_model.layers", vision="model.vision_model",
    notes="image splitting + pixel shuffle",
))
register_family(Family(
    name="smolvlm", model_types=("smolvlm",), layers="model.text_model.layers", vision="model.vision_model",
    notes="Idefics3 layout (image splitting + pixel shuffle)",
))
register_family(Family(
    name="internvl", model_types=("internvl",), layers="model.language_model.layers",
    notes="448px tiles + pixel shuffle",
))
register_family(Family(
    name="gemma3", model_types=("gemma3",), layers="model.language_model.layers",
    notes="fixed 896px grid pooled to 256 tokens; sliding-window layers",
))
register_family(Family(
    name="text", model_types=("llama", "qwen2", "qwen3", "mistral", "gemma3_text"),
    layers="model.layers", text_config=None, vision=None, image_token_fields=(),
    notes="text-only decoders (no visual tokens)",
))
