"""``visual_knockout``: the head may not attend to visual (image / video) tokens.

Visual key positions come from the model's ``input_ids`` (tracked across decode steps); they are
removed from the model's own mask (``allowed_keys``). A query row left with no allowed key outputs
zeros.
"""

from core_eval.attention import masked_sdpa
from core_eval.masks.base import ReplaceHeads, Variant, VariantError
from core_eval.masks.registry import register_variant


@register_variant
class VisualKnockout(Variant):
    name = "visual_knockout"
    description = "head blocked from attending to visual tokens"

    def apply(self, patcher, heads):
        if not patcher.adapter.visual_token_ids:
            raise VariantError(
                f"visual_knockout needs image token ids, but family {patcher.adapter.family.name!r} has none "
                "(a text-only model has no visual tokens to knock out)"
            )
        tracker = patcher.tracker

        def compute(q, k, v, allowed, scaling):
            visual = tracker.key_flags(k.shape[2]).to(allowed.device)  # (B, kv)
            return masked_sdpa(q, k, v, allowed & ~visual[:, None, None, :], scaling)

        for layer, idx in heads.items():
            patcher.attention(layer, ReplaceHeads(idx, compute))
