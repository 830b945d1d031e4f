"""``zero`` ablation: a head's slice of the ``o_proj`` input is set to 0.

Forward pre-hook on ``o_proj``; works with any attention backend. (Editing ``o_proj``'s *output*
would mix heads.) Equivalent to zeroing the head's input columns of ``o_proj.weight``.
"""

from core_eval.masks.base import Variant
from core_eval.masks.registry import register_variant


@register_variant
class ZeroAblation(Variant):
    name = "zero"
    description = "head output set to 0 before o_proj"

    def apply(self, patcher, heads):
        for layer, idx in heads.items():
            patcher.o_proj_input(layer, lambda x, idx=idx: x.index_fill(2, idx.to(x.device), 0))
