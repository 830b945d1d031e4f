"""Registers ``core_hf`` with lm-eval's model registry, lazily, from a ``.pth`` file.

lm-eval 0.4.13 has no plugin discovery for models (DESIGN §6). The wheel ships
``core_eval_lm_eval_hook.pth`` at site-packages' root; it imports this module at interpreter
start-up, which only installs a tiny import hook (no lm-eval or torch import). When
``lm_eval.api.registry`` is later imported, the hook

1. imports ``lm_eval.models`` first: the registry fills in its built-in models only when it is
   empty, so registering ``core_hf`` before that would make ``hf``, ``hf-multimodal`` ... vanish;
2. registers ``core_hf`` as a lazy placeholder (``core_eval.integrations.lm_eval:CoreHFLM``).

Safe to run twice (venvs can process ``.pth`` files twice).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET_MODULE = "lm_eval.api.registry"
MODEL_NAMES = ("core_hf",)
MODEL_TARGET = "core_eval.integrations.lm_eval:CoreHFLM"
_SENTINEL = "_core_eval_lm_eval_hook_installed"


def register_models() -> None:
    """Register our models (idempotent); needs ``lm_eval.api.registry`` importable."""
    import lm_eval.models  # noqa: F401  (fills the built-in models first; cheap, no heavy imports)
    from lm_eval.api.registry import model_registry

    for name in MODEL_NAMES:
        if name not in model_registry:
            model_registry.register(name, target=MODEL_TARGET)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        try:
            register_models()
        except Exception as e:  # never break lm-eval itself
            print(f"core_eval: could not register core_hf with lm-eval: {e!r}", file=sys.stderr)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if getattr(sys, _SENTINEL, False):
        return
    setattr(sys, _SENTINEL, True)
    if TARGET_MODULE in sys.modules:
        register_models()
    else:
        sys.meta_path.insert(0, _Finder())


install()
