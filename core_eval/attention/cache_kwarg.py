"""Where a forward or ``generate`` call carries its KV cache.

transformers 5.24 renamed the keyword ``past_key_values`` to ``cache`` (the old name is still
accepted, with a deprecation warning, until 6.0). Everything in core_eval that reads or passes
a cache goes through these two helpers, so both releases behave the same.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["CACHE_KWARGS", "cache_in", "cache_kwarg"]

#: Keyword names a cache may arrive under, newest first.
CACHE_KWARGS = ("cache", "past_key_values")


def cache_in(kwargs: dict):
    """The cache passed in ``kwargs`` under either name, or ``None``."""
    for name in CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


def cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword ``model.forward`` (and so ``generate``) takes its cache under."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
