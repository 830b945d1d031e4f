"""Hybrid sparse attention: full (CoRe) heads keep the model's attention, the rest a sparse pattern.

Semantics (DESIGN §4, §8), for a sparse head: query ``i`` sees key ``j`` iff the model's own mask
allows it (what the model passes to the attention function: causal, padding, and e.g. Gemma 3's
bidirectional image blocks or PaliGemma's bidirectional prefix) AND (``j`` is one of the row's
first ``n_sink`` real tokens, or ``j`` is not visual [``text_only`` only], or ``i - j < window``).
The pattern only ever removes keys; ``i - j < window`` holds for every future key ``j > i``, so a
bidirectional block stays visible within the window. ``attention_mask=None`` means plain causal
(:func:`core_eval.attention.reference.allowed_keys`).

Modules:

* :mod:`.pattern`: :class:`Pattern`, :func:`register_pattern` (patterns of your own: a far-key rule)
  and the per-key flags (real / visual / sink) the rules read;
* :mod:`.permute`: the exact load-time q/k/v/o permutation that puts each layer's full KV heads first;
* prefill backends: :mod:`.flex` (one FlexAttention call per layer, per-head block mask composed
  with the model's mask, compiled per length bucket, block lists cached across forwards;
  :func:`flex_support` says why it cannot run)
  and :mod:`.blocks` (the sparse group block by block on gathered keys, SDPA; runs anywhere);
* :mod:`.cache`: the per-head KV cache of ``generate()``: all positions for full heads, only what a
  future query may see for sparse heads;
* :mod:`.attention`: one hybrid layer (backend choice, decode on the per-head cache);
* :mod:`.oracle`: :func:`reference_hybrid`, dense attention with an explicit per-head boolean mask,
  the oracle of every test;
* :mod:`.variant`: the ``streaming`` / ``text_only`` mask variants (registered with
  :mod:`core_eval.masks`).
"""

from core_eval.sparse.attention import BACKENDS, HybridAttention
from core_eval.sparse.blocks import sparse_prefill
from core_eval.sparse.cache import HybridCache, HybridLayer
from core_eval.sparse.flex import (COMPILE_SECONDS, STRUCTURES, FlexPlan, StructureCache, bucket, flex_prefill,
                                  flex_support)
from core_eval.sparse.oracle import reference_hybrid
from core_eval.sparse.pattern import PATTERNS, Pattern, register_pattern, row_flags
from core_eval.sparse.permute import permute_layer, unpermute_layer

__all__ = [
    "BACKENDS", "COMPILE_SECONDS", "FlexPlan", "HybridAttention", "HybridCache", "HybridLayer", "PATTERNS",
    "Pattern", "STRUCTURES", "StructureCache", "bucket", "flex_prefill", "flex_support", "permute_layer",
    "reference_hybrid", "register_pattern", "row_flags", "sparse_prefill", "unpermute_layer",
]
