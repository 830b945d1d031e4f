"""Apply a head set with a mask variant to an already-loaded model.

:func:`apply_intervention` is what :func:`core_eval.load` and the harness wrappers call. An empty
head set installs nothing, so the model stays bit-identical to the unmodified one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core_eval.adapters import ModelAdapter, ModelShape, adapter_for
from core_eval.masks import Patcher, Variant, VariantError, make_variant
from core_eval.spec import check_heads as _check_heads, heads_by_layer


def check_heads(heads, shape: ModelShape) -> list[tuple[int, int]]:
    """Validate ``[(layer, head), ...]`` against ``shape`` (raises ``HeadSpecError``); sorted list."""
    return _check_heads(heads, shape.num_layers, shape.num_heads)


def head_index(heads) -> dict[int, torch.Tensor]:
    """layer -> LongTensor of query-head indices (ascending), for the variants."""
    return {l: torch.tensor(h, dtype=torch.long) for l, h in heads_by_layer(heads).items()}


@dataclass
class Intervention:
    """What was applied to a model; :meth:`remove` restores it."""

    variant: Variant
    heads: list[tuple[int, int]]
    adapter: ModelAdapter
    patcher: Patcher | None = None
    provenance: dict = field(default_factory=dict)

    def remove(self) -> None:
        if self.patcher is not None:
            self.patcher.remove()
            self.patcher = None

    def summary(self) -> dict:
        """JSON-able record of the intervention, written into every output."""
        from core_eval import __version__

        per_layer = {f"layer_{l}": h for l, h in heads_by_layer(self.heads).items()}
        variant = self.variant.describe()
        if not self.heads and variant.get("kind") != "sparse":
            # nothing was ablated: the unmodified model, not a `zero` ablation of no heads
            variant = {"name": "none", "kind": "none", "options": {}, "requested": variant}
        return {
            "variant": variant,
            "n_heads": len(self.heads),
            "heads": [list(h) for h in self.heads],
            "heads_per_layer": per_layer,
            "attention_backend": self.adapter.text_config._attn_implementation,
            "family": self.adapter.family.name,
            "shape": self.adapter.shape.as_dict(),
            "core_eval_version": __version__,
            **self.provenance,
        }

    def one_line(self) -> str:
        """What was applied, in one line (printed once at start by the harness wrappers)."""
        return summary_line(self.summary())


def summary_line(summary: dict) -> str:
    """``core_eval: zero ablation of 3 heads L0:[1, 2] L1:[0] (selection top k=3, spec s.json #1a2b)``."""
    v = summary.get("variant") or {}
    opts = {k: val for k, val in (v.get("options") or {}).items() if k != "means"}
    what = f"{v.get('name')} {'sparse attention, full heads' if v.get('kind') == 'sparse' else 'ablation of'}"
    layers = " ".join(f"L{k.split('_', 1)[1]}:{h}" for k, h in (summary.get("heads_per_layer") or {}).items())
    sel = summary.get("selection") or {}
    sel_text = ", ".join(f"{k}={val}" for k, val in sel.items() if k not in ("heads", "by_layer") and val is not None)
    spec = summary.get("spec") or {}
    spec_text = f", spec {spec.get('path')} #{spec.get('hash')}" if spec else ""
    opt_text = (" " + ",".join(f"{k}={val}" for k, val in opts.items())) if opts else ""
    return (f"core_eval: {what} {summary.get('n_heads', 0)} heads{(' ' + layers) if layers else ''}{opt_text} "
            f"(selection {sel_text or 'none'}{spec_text})")


def apply_intervention(
    model: torch.nn.Module,
    heads,
    variant: str | Variant = "zero",
    *,
    provenance: dict | None = None,
    **options,
) -> Intervention:
    """Apply ``variant`` to query heads ``heads`` (``[(layer, head), ...]``) of the language model."""
    adapter = adapter_for(model)
    heads = check_heads(heads, adapter.shape)
    if isinstance(variant, str):
        variant = make_variant(variant, **options)
    elif options:
        raise VariantError("pass options either to the Variant instance or as keyword arguments, not both")
    variant.check(adapter.shape, heads)
    intervention = Intervention(variant, heads, adapter, provenance=dict(provenance or {}))
    if heads or variant.kind == "sparse":  # sparse: the heads are the *full* ones; none = all sparse
        patcher = Patcher(model, adapter)
        try:
            variant.apply(patcher, head_index(heads))
        except Exception:
            patcher.remove()
            raise
        intervention.patcher = patcher
    return intervention
