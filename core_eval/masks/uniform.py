"""``uniform`` ablation: the head's query is zeroed, so it attends uniformly over allowed keys.

What Retrieval Head's masking does. The head's output becomes the mean of the values it may
see: the model's own mask still applies (causal, padding, Gemma 3's bidirectional image blocks;
:class:`~core_eval.masks.base.ReplaceHeads` passes it through ``allowed_keys``).
"""

import torch

from core_eval.attention import masked_sdpa
from core_eval.masks.base import ReplaceHeads, Variant
from core_eval.masks.registry import register_variant


def _uniform(q, k, v, allowed, scaling):
    return masked_sdpa(torch.zeros_like(q), k, v, allowed, scaling)


@register_variant
class UniformAblation(Variant):
    name = "uniform"
    description = "query zeroed: uniform attention over the allowed keys"

    def apply(self, patcher, heads):
        for layer, idx in heads.items():
            patcher.attention(layer, ReplaceHeads(idx, _uniform))
