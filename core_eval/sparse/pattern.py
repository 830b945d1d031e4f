"""The sparse heads' pattern (:class:`Pattern`) and the per-key flags it reads (:func:`row_flags`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core_eval.attention.reference import allowed_keys

#: pattern name -> far-key rule ``far(real, visual, sink) -> bool`` (see :func:`register_pattern`)
PATTERNS: dict[str, Callable] = {}


def register_pattern(name: str, far: Callable, *, needs_visual: bool = False, replace: bool = False) -> None:
    """Register a sparse pattern: a sparse head sees, within the model's mask, its recent window and
    the keys ``far(real, visual, sink)`` marks, at any distance.

    ``far`` must be elementwise over keys (bool tensors of any one shape in, the same shape out:
    ``(B, T)`` in prefill, ``(B,)`` for each decode token), so the prefill backends, the oracle and
    the decode cache all read the same rule; ``real`` (not padding) is ANDed in afterwards.
    ``needs_visual``: refuse models without visual tokens (the rule reads ``visual``). A variant
    uses it by subclassing :class:`core_eval.sparse.variant.SparseVariant` with ``pattern_kind = name``.
    """
    if name in PATTERNS and PATTERNS[name] is not far and not replace:
        raise ValueError(f"a sparse pattern named {name!r} is already registered; pass replace=True")
    PATTERNS[name] = far
    _NEEDS_VISUAL[name] = needs_visual


_NEEDS_VISUAL: dict[str, bool] = {}
register_pattern("streaming", lambda real, visual, sink: sink)
register_pattern("text_only", lambda real, visual, sink: sink | ~visual, needs_visual=True)


@dataclass(frozen=True)
class Pattern:
    """A sparse head's pattern: ``kind`` a registered name (:data:`PATTERNS`), ``n_sink`` sink tokens, ``window``."""

    kind: str
    n_sink: int = 4
    window: int = 256

    def __post_init__(self):
        if self.kind not in PATTERNS:
            raise ValueError(f"sparse pattern {self.kind!r}; use one of {', '.join(PATTERNS)} (or register_pattern)")
        if self.n_sink < 0 or self.window < 1:
            raise ValueError(f"sink={self.n_sink} must be >= 0 and window={self.window} >= 1")

    @property
    def needs_visual(self) -> bool:
        return _NEEDS_VISUAL[self.kind]

    def far(self, real, visual, sink):
        """Keys visible from any distance (the pattern's rule: sinks, text tokens for ``text_only``), real only."""
        return PATTERNS[self.kind](real, visual, sink) & real

    def allowed(self, q_pos, k_pos, k_far, k_real, model_mask=None):
        """``(B, 1, q, K)`` bool: what the pattern leaves of the model's mask.

        q_pos ``(B|1, q)``, key positions/flags ``(B, K)`` (pos -1 = empty slot); ``model_mask``
        ``(B|1, 1, q, K)`` bool over the same keys, or ``None`` for plain causal (``kp <= qp``).
        The pattern adds no causality of its own: ``qp - kp < window`` holds for future keys.
        """
        qp, kp = q_pos[:, None, :, None], k_pos[:, None, None, :]
        base = (kp <= qp) if model_mask is None else model_mask
        ok = base & (kp >= 0) & k_real[:, None, None, :]
        return ok & ((qp - kp < self.window) | k_far[:, None, None, :])


def row_flags(attention_mask, batch: int, kv: int, device, visual: torch.Tensor, n_sink: int):
    """``real``, ``visual``, ``sink`` flags ``(B, kv)`` over absolute key positions ``0..kv-1``.

    ``real`` comes from the last query row of the model's mask (it sees every real key of a
    full-attention layer); sinks are each row's first ``n_sink`` real positions.
    """
    if attention_mask is None:
        real = torch.ones(batch, kv, dtype=torch.bool, device=device)
    else:
        real = allowed_keys(attention_mask, kv, kv, device)[:, 0, -1].expand(batch, kv)
    rank = real.long().cumsum(1) - 1
    sink = real & (rank < n_sink)
    return real, visual.to(device)[:, :kv] & real, sink
