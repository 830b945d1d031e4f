"""Attention-level mechanics shared by all interventions.

* :mod:`.function` registers the ``core_eval`` attention function with transformers'
  ``AttentionInterface`` (and ``sdpa_mask`` under the same name with ``AttentionMaskInterface``).
  It runs the normal SDPA call and then lets the *patches* attached to the attention module
  rewrite or observe individual heads.
* :mod:`.reference` holds the slow, obviously-right helpers (explicit boolean masks) used both
  by patches on a few heads and as test oracles.
* :mod:`.tracker` keeps, per batch row, which sequence positions hold visual tokens, across
  prefill and every decode step.
"""

from core_eval.attention.function import (
    ATTENTION_NAME,
    AttentionPatch,
    attach_patch,
    detach_patches,
    ensure_registered,
    set_compute,
)
from core_eval.attention.reference import allowed_keys, masked_sdpa
from core_eval.attention.tracker import SequenceTracker

__all__ = [
    "ATTENTION_NAME",
    "AttentionPatch",
    "SequenceTracker",
    "allowed_keys",
    "attach_patch",
    "detach_patches",
    "ensure_registered",
    "masked_sdpa",
    "set_compute",
]
