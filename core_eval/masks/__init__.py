"""Mask variants: one small module per intervention, found through a registry.

Built-ins: ``zero``, ``mean``, ``uniform``, ``visual_knockout`` (ablations). A variant of your
own is a :class:`Variant` subclass registered with :func:`register_variant` (or an entry point in
group ``core_eval.variants``, or a ``"pkg.module:ClassName"`` path)::

    import torch
    from core_eval.masks import Variant, register_variant

    @register_variant
    class HalfScale(Variant):
        name = "half"
        description = "scale the head's output by `factor`"
        options = {"factor": (float, 0.5, "multiplier")}

        def apply(self, patcher, heads):
            for layer, idx in heads.items():
                def fn(x, idx=idx):          # x: (B, T, H, D) per-head outputs before o_proj
                    scale = torch.ones(x.shape[2], 1, dtype=x.dtype, device=x.device)
                    scale[idx] = self.config["factor"]
                    return x * scale
                patcher.o_proj_input(layer, fn)
"""

from core_eval.masks.base import Patcher, ReplaceHeads, Variant, VariantError
from core_eval.masks.registry import (
    ENTRY_POINT_GROUP,
    available_variants,
    get_variant,
    make_variant,
    register_variant,
)

# Built-in variants register themselves on import.
from core_eval.masks import mean, uniform, visual_knockout, zero  # noqa: E402,F401
# streaming / text_only live with the rest of sparse attention; `from pkg import module` tolerates the
# cycle when core_eval.sparse.variant is imported first (it imports core_eval.masks.base).
from core_eval.sparse import variant as _sparse_variants  # noqa: E402,F401

__all__ = [
    "ENTRY_POINT_GROUP",
    "Patcher",
    "ReplaceHeads",
    "Variant",
    "VariantError",
    "available_variants",
    "get_variant",
    "make_variant",
    "register_variant",
]
