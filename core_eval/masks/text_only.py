"""``text_only`` hybrid sparse attention: non-CoRe KV heads see all non-visual tokens + sinks + window."""

from core_eval.masks._sparse import SparseVariant
from core_eval.masks.registry import register_variant


@register_variant
class TextOnly(SparseVariant):
    name = "text_only"
    pattern_kind = "text_only"
    description = "full attention for the given (CoRe) heads; others: text tokens + sinks + recent window"
