"""``mean`` ablation: the head's slice of the ``o_proj`` input is replaced by its mean output.

The means ``(L, H, D)`` come from a reference set (:func:`core_eval.means.compute_head_means`),
stored as ``<spec>.means.safetensors`` next to the head spec; :func:`core_eval.load` computes
them on generated probes when the file is missing.
"""

import torch

from core_eval.masks.base import Variant, VariantError
from core_eval.masks.registry import register_variant


@register_variant
class MeanAblation(Variant):
    name = "mean"
    description = "head output replaced by its mean over a reference set"
    options = {"means": (object, None, "(L, H, D) tensor or path to a .means.safetensors file")}

    def apply(self, patcher, heads):
        from core_eval.means import load_head_means

        means = self.config["means"]
        if means is None:
            raise VariantError(
                "mean ablation needs head means: pass means=PATH (see core_eval.means.compute_head_means) "
                "or load through core_eval.load(), which computes them on a reference set"
            )
        if not isinstance(means, torch.Tensor):
            means = load_head_means(means)
        s = patcher.adapter.shape
        if tuple(means.shape) != (s.num_layers, s.num_heads, s.head_dim):
            raise VariantError(
                f"head means have shape {tuple(means.shape)} but the model needs "
                f"({s.num_layers}, {s.num_heads}, {s.head_dim}) = (layers, heads, head_dim)"
            )
        for layer, idx in heads.items():
            m = means[layer].index_select(0, idx)  # (h, D)

            def fn(x, idx=idx, m=m):
                fill = m.to(device=x.device, dtype=x.dtype).expand(*x.shape[:2], *m.shape)
                return x.index_copy(2, idx.to(x.device), fill)

            patcher.o_proj_input(layer, fn)

    def describe(self):
        d = super().describe()
        if isinstance(d["options"].get("means"), torch.Tensor):
            d["options"]["means"] = "<tensor>"
        return d
