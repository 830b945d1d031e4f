"""Head specs (``core-head-spec/v1``): read, validate, write, select heads, map them to KV heads.

Pure file logic: numpy only, no model, no harness, no transformers (``core_eval.adapters.base``,
home of :class:`ModelShape`, is imported lazily and only where a ``ModelShape`` is built).

Public entry points::

    from core_eval.spec import (HeadSpec, HeadSpecError, load_head_spec, spec_from_scores,
                                select_heads, to_kv_heads, heads_by_layer)

Shapes: a head is ``(layer, query_head)``; score arrays are ``[num_layers, num_heads]``; a KV
head is ``(layer, kv_head)`` and query head ``h`` reads KV head ``h // groups``.
"""

from core_eval.spec.errors import HeadSpecError
from core_eval.spec.format import SCHEMA, HeadSpec, spec_from_scores
from core_eval.spec.legacy import from_duo_attention_tsv, from_retrieval_head, load_head_spec
from core_eval.spec.selection import (
    KV_POLICIES,
    RULES,
    check_heads,
    heads_by_layer,
    kv_to_query_heads,
    resolve_count,
    select_heads,
    to_kv_heads,
)

__all__ = [
    "KV_POLICIES",
    "RULES",
    "SCHEMA",
    "HeadSpec",
    "HeadSpecError",
    "check_heads",
    "from_duo_attention_tsv",
    "from_retrieval_head",
    "heads_by_layer",
    "kv_to_query_heads",
    "load_head_spec",
    "resolve_count",
    "select_heads",
    "spec_from_scores",
    "to_kv_heads",
]
