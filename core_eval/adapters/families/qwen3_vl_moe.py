"""Qwen3-VL-MoE: Qwen3-VL (same processor, vision tower, DeepStack and region rule; see
:mod:`core_eval.adapters.families.qwen3_vl`) with a mixture-of-experts MLP in the LM decoder layers.

Only the MLP differs: ``layer.mlp`` is a ``Qwen3VLMoeTextSparseMoeBlock`` (a top-k router over
experts stored as 3-D tensors) instead of a dense MLP. The attention is the dense model's (q/k/v/o
with per-head ``q_norm`` / ``k_norm``), so heads, ``o_proj`` ablation hooks, attention variants and
the hybrid-sparse head permutation apply unchanged; experts are not heads and are never touched.
A numerical change in attention output can flip a router's top-k choice, so an ablation's effect
on the logits may be less smooth than in a dense model (empty interventions stay bit-identical).
"""

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.qwen2_vl import QWEN_REGION, QWEN_REQUIRES
from core_eval.adapters.families.qwen3_vl import QWEN3_VL_NOTES, tiny_qwen3_vl

FAMILY = Family(
    name="qwen3_vl_moe", model_types=("qwen3_vl_moe",), layers="model.language_model.layers", vision="model.visual",
    video_token_fields=("video_token_id",), notes="MoE MLP (experts untouched); " + QWEN3_VL_NOTES,
    region=QWEN_REGION, requires=QWEN_REQUIRES,
    tiny=(TinyRecipe("qwen3_vl_moe", lambda p: tiny_qwen3_vl(p, moe=True), "Qwen3VLMoeForConditionalGeneration",
                     image_tokens=12),),
)
