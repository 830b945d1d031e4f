"""core_eval: CoRe heads for multimodal LLMs (RAM scoring, load-time ablation, hybrid sparse attention).

Public entry points are imported lazily so that ``import core_eval`` stays cheap (it runs in the
lm-eval hook).
"""

__version__ = "0.1.0"

_LAZY = {
    "load": ("core_eval.loading", "load"),
    "Loaded": ("core_eval.loading", "Loaded"),
    "plan": ("core_eval.loading", "plan"),
    "apply_intervention": ("core_eval.intervene", "apply_intervention"),
    "Intervention": ("core_eval.intervene", "Intervention"),
    "register_variant": ("core_eval.masks", "register_variant"),
    "Variant": ("core_eval.masks", "Variant"),
    "HeadSpec": ("core_eval.spec", "HeadSpec"),
    "load_head_spec": ("core_eval.spec", "load_head_spec"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'core_eval' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
