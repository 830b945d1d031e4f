"""The ``core_eval`` attention function and the per-module patch list it consults.

The function computes exactly what transformers' ``sdpa`` backend computes (same call, same
arguments), then hands the output to each :class:`AttentionPatch` attached to the module, in
order. A module without patches is bit-identical to ``sdpa``. A layer may instead have its whole
attention computation replaced (:func:`set_compute`, used by hybrid sparse attention).
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "core_eval"
_PATCHES_ATTR = "_core_eval_patches"
_COMPUTE_ATTR = "_core_eval_compute"


class AttentionPatch(Protocol):
    """Rewrites or observes heads of one attention module.

    ``__call__(module, query, key, value, attention_mask, out, scaling) -> out`` where query is
    ``(B, H, q, D)``, key/value ``(B, Hkv, kv, D)`` (rotated, cache included), ``attention_mask``
    is the mask the model passed (bool 4-D or ``None`` = causal) and ``out`` is the SDPA output
    ``(B, q, H, D)``. Return a new ``out`` (never modify it in place: autograd may need it).
    """

    def __call__(self, module, query, key, value, attention_mask, out, scaling): ...


def core_eval_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    compute = getattr(module, _COMPUTE_ATTR, None)
    if compute is not None:  # a layer whose attention is computed differently (hybrid sparse)
        out, weights = compute(module, query, key, value, attention_mask, scaling=scaling, **kwargs), None
    else:
        out, weights = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    for patch in getattr(module, _PATCHES_ATTR, ()):
        out = patch(module, query, key, value, attention_mask, out, scaling)
    return out, weights


_registered = False


def ensure_registered() -> str:
    """Register the function and its mask builder (idempotent). Returns the backend name."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTENTION_NAME, core_eval_attention)
        # Without a registered mask function every layer would get attention_mask=None (DESIGN §6).
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
    return ATTENTION_NAME


def set_compute(module: torch.nn.Module, compute) -> None:
    """Replace the layer's SDPA call by ``compute(module, query, key, value, attention_mask,
    scaling=..., **kwargs) -> (B, q, H, D)`` (``None`` restores SDPA). Patches still run after it."""
    if compute is None:
        if hasattr(module, _COMPUTE_ATTR):
            delattr(module, _COMPUTE_ATTR)
    else:
        setattr(module, _COMPUTE_ATTR, compute)


def attach_patch(module: torch.nn.Module, patch: AttentionPatch) -> None:
    patches = getattr(module, _PATCHES_ATTR, None)
    if patches is None:
        patches = []
        setattr(module, _PATCHES_ATTR, patches)
    patches.append(patch)


def detach_patches(module: torch.nn.Module, patches=None) -> None:
    """Remove the given patches (all when ``None``) from ``module``."""
    current = getattr(module, _PATCHES_ATTR, None)
    if current is None:
        return
    keep = [] if patches is None else [p for p in current if all(p is not q for q in patches)]
    if keep:
        setattr(module, _PATCHES_ATTR, keep)
    else:
        delattr(module, _PATCHES_ATTR)
