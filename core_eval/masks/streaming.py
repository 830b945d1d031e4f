"""``streaming`` hybrid sparse attention: non-CoRe KV heads see sink tokens + a recent window."""

from core_eval.masks._sparse import SparseVariant
from core_eval.masks.registry import register_variant


@register_variant
class Streaming(SparseVariant):
    name = "streaming"
    pattern_kind = "streaming"
    description = "full attention for the given (CoRe) heads; others: sinks + recent window"
