"""The hybrid sparse-attention variants ``streaming`` and ``text_only`` and their shared base.

For these variants the head set names the **full** (CoRe) heads; every other head of a
full-attention layer becomes sparse. Query heads become KV heads through ``kv_policy``
(``any``: a KV head is full if any of its query heads is; ``all``; ``mean`` needs scores and is
resolved by :func:`core_eval.load` from the spec). :func:`core_eval.load` uses the head spec's
``kv_policy`` unless the option is given. Sliding-window layers (Gemma 3) keep their own
local pattern: their cache already holds only the window.
"""

from __future__ import annotations

import warnings

import torch

from core_eval.attention.cache_kwarg import cache_in, cache_kwarg
from core_eval.masks.base import Variant, VariantError
from core_eval.masks.registry import register_variant
from core_eval.sparse.attention import BACKENDS, HybridAttention, PlanCache
from core_eval.sparse.cache import HybridCache
from core_eval.sparse.pattern import Pattern


class SparseVariant(Variant):
    kind = "sparse"
    pattern_kind = ""
    options = {
        "sink": (int, 4, "sink tokens every sparse head keeps (each row's first real tokens)"),
        "window": (int, 256, "recent-window length of sparse heads"),
        "kv_policy": (str, "any", "query heads -> KV heads: any | all | mean (default: the head spec's, else any)"),
        "block": (int, 0, "prefill query block size of the blocks backend (0: auto)"),
        "backend": (str, "auto", "prefill backend: auto | flex | blocks (auto: flex on CUDA where flex_support allows it)"),
        "flex_compile": (bool, True, "compile the FlexAttention kernel (false: eager, slow; for checks)"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        try:
            self.pattern = Pattern(self.pattern_kind, self.config["sink"], self.config["window"])
        except ValueError as e:
            raise VariantError(str(e)) from None
        if self.config["kv_policy"] not in ("any", "all", "mean"):
            raise VariantError(f"kv_policy={self.config['kv_policy']!r}: use any, all or mean (mean: core_eval.load "
                               "resolves it from the head spec's scores)")
        self.kv_policy_source = "default"  # or "spec" / "option", set by core_eval.load
        if self.config["backend"] not in BACKENDS:
            raise VariantError(f"backend={self.config['backend']!r}: use one of {', '.join(BACKENDS)}")
        self.full_kv: dict[int, list[int]] = {}

    def full_kv_heads(self, shape, heads: dict[int, torch.Tensor]) -> dict[int, list[int]]:
        """layer -> sorted full KV heads, from the full query heads ``heads``."""
        g, out = shape.groups, {}
        policy = self.config["kv_policy"]
        if policy == "mean":  # core_eval.load turned the spec's mean ranking into whole KV groups
            whole = all(len(set(h.tolist())) == g * len({x // g for x in h.tolist()}) for h in heads.values())
            if not whole:
                raise VariantError("kv_policy=mean ranks KV heads by the spec's scores: load through core_eval.load "
                                   "with a head spec (or pass kv_policy=any or all)")
            policy = "all"
        for layer in range(shape.num_layers):
            q = set(heads.get(layer, torch.zeros(0, dtype=torch.long)).tolist())
            kvs = []
            for kv in range(shape.num_kv_heads):
                members = {kv * g + i for i in range(g)}
                hit = members & q
                if (policy == "any" and hit) or (policy == "all" and hit == members):
                    kvs.append(kv)
            out[layer] = kvs
        return out

    def apply(self, patcher, heads):
        ad = patcher.adapter
        s = ad.shape
        if self.pattern.needs_visual and not ad.visual_token_ids:
            raise VariantError(f"{self.pattern.kind} reads which tokens are visual; this text-only model has no visual "
                               "tokens, use streaming")
        full = self.full_kv_heads(s, heads)
        hybrid, plans = {}, PlanCache()  # one flex block structure per forward, shared by the layers
        for layer, kvs in full.items():
            if len(kvs) == s.num_kv_heads or ad.is_sliding(layer):
                continue  # dense layer: nothing to do
            patcher.permute_heads(layer, kvs)
            c = self.config
            attn = HybridAttention(layer, len(kvs), s.groups, self.pattern, patcher.tracker, c["block"], c["backend"],
                                   c["flex_compile"], plans)
            patcher.compute(layer, attn)
            hybrid[layer] = attn
        self.full_kv = full
        self.hybrid_layers = sorted(hybrid)
        if not hybrid:
            return
        patcher.model_pre_hook(self._warn_if_window_covers_prompt)
        config = patcher.model.config

        def wrapper(generate):
            def hybrid_generate(*args, **kwargs):
                if cache_in(kwargs) is None:
                    kwargs[cache_kwarg(patcher.model)] = HybridCache.attached(config, hybrid)
                return generate(*args, **kwargs)

            return hybrid_generate

        patcher.wrap_generate(wrapper)

    def _warn_if_window_covers_prompt(self, module, args, kwargs) -> None:
        """Once, at the first prefill: sink + window >= the prompt length means every sparse head
        still sees every key of that prompt, so hybrid sparse attention changes nothing."""
        if getattr(self, "_window_checked", False):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None or ids.dim() < 2 or ids.shape[1] < 2:
            return
        self._window_checked = True
        length = int(ids.shape[1])
        span = self.config["sink"] + self.config["window"]
        if span >= length:
            warnings.warn(
                f"sparse={self.name}: sink ({self.config['sink']}) + window ({self.config['window']}) = {span} is at "
                f"least the prompt length ({length} tokens), so every sparse head still sees every key and the "
                f"sparse heads change nothing. Use a smaller window (window=N with sink + N well below {length}).",
                UserWarning, stacklevel=2)

    def describe(self):
        d = super().describe()
        if self.full_kv:
            n_kv = sum(len(v) for v in self.full_kv.values())
            d["full_kv_heads"] = {f"layer_{l}": v for l, v in self.full_kv.items() if v}
            d["n_full_kv_heads"] = n_kv
            d["hybrid_layers"] = getattr(self, "hybrid_layers", [])
            d["kv_policy_source"] = self.kv_policy_source
        return d


@register_variant
class Streaming(SparseVariant):
    name = "streaming"
    pattern_kind = "streaming"
    description = "full attention for the given (CoRe) heads; others: sinks + recent window"


@register_variant
class TextOnly(SparseVariant):
    name = "text_only"
    pattern_kind = "text_only"
    description = "full attention for the given (CoRe) heads; others: text tokens + sinks + recent window"
