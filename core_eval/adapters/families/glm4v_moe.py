"""GLM-4.5V (``glm4v_moe``): GLM-4.1V's vision tower, processor and merge geometry with a MoE language
model (routed + shared experts from ``first_k_dense_replace`` on); causal mask.

Its attention (``Glm4vMoeTextAttention``) has separate ``q_proj`` / ``k_proj`` / ``v_proj`` (bias) and
``o_proj`` (no bias) Linear layers, ``head_dim`` from the config, partial rotary applied per head, and
a plain pre-norm decoder layer (no norm after ``o_proj``), so head slicing and permutation are exact.
"""

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.glm4v import GLM4V_REGION, GLM4V_REQUIRES, tiny_glm4v

FAMILY = Family(
    name="glm4v_moe", model_types=("glm4v_moe",), layers="model.language_model.layers", vision="model.visual",
    notes="GLM-4.1V geometry (GLM smart_resize, 2x2 conv merge, 3-D RoPE) with a MoE LM",
    region=GLM4V_REGION, requires=GLM4V_REQUIRES,
    tiny=(TinyRecipe("glm4v_moe", lambda p: tiny_glm4v(p, moe=True), "Glm4vMoeForConditionalGeneration",
                     image_tokens=12),),
)
