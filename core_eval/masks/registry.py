"""The variant registry: names -> :class:`~core_eval.masks.base.Variant` classes.

A variant is found, in order, by

1. its registered name (built-ins, or anything decorated with :func:`register_variant`);
2. an installed package's entry point in the group ``core_eval.variants``
   (``my_variant = "my_pkg.variants:MyVariant"``), loaded on first use;
3. a dotted path ``"pkg.module:ClassName"`` accepted wherever a mode name is.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from core_eval.masks.base import Variant, VariantError

ENTRY_POINT_GROUP = "core_eval.variants"
_REGISTRY: dict[str, type[Variant]] = {}


def register_variant(cls: type[Variant] | None = None, *, name: str | None = None, replace: bool = False):
    """Class decorator: ``@register_variant`` or ``@register_variant(name="x")``."""

    def deco(c: type[Variant]) -> type[Variant]:
        if not (isinstance(c, type) and issubclass(c, Variant)):
            raise TypeError(f"{c!r} must subclass core_eval.masks.Variant")
        key = name or c.name
        if not key:
            raise VariantError(f"{c.__name__} has no name; set the class attribute `name`")
        if key in _REGISTRY and _REGISTRY[key] is not c and not replace:
            raise VariantError(f"a variant named {key!r} is already registered ({_REGISTRY[key].__module__})")
        if c.name != key:
            c.name = key
        _REGISTRY[key] = c
        return c

    return deco(cls) if cls is not None else deco


def _from_entry_points(name: str) -> type[Variant] | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            return register_variant(cls, name=name, replace=True)
    return None


def _from_dotted(path: str) -> type[Variant]:
    module_name, _, attr = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise VariantError(f"cannot import variant {path!r}: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, Variant)):
        raise VariantError(f"{path!r} is not a core_eval.masks.Variant subclass")
    return obj


def get_variant(name: str) -> type[Variant]:
    """Resolve a variant class by name, entry point or ``pkg.module:Class`` path."""
    if not isinstance(name, str) or not name:
        raise VariantError(f"variant name must be a non-empty string, got {name!r}")
    if ":" in name:
        return _from_dotted(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    found = _from_entry_points(name)
    if found is not None:
        return found
    raise VariantError(
        f"unknown mask variant {name!r}. Available: {', '.join(available_variants())}. "
        "A variant of your own can be given as 'pkg.module:ClassName', registered with "
        "@core_eval.masks.register_variant, or declared under the entry-point group "
        f"'{ENTRY_POINT_GROUP}'."
    )


def available_variants(kind: str | None = None) -> list[str]:
    """Registered names plus entry-point names (not loaded), optionally of one ``kind``."""
    names = {n for n, c in _REGISTRY.items() if kind is None or c.kind == kind}
    if kind is None:
        names |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def make_variant(name: str, **options) -> Variant:
    """Instantiate a variant with options (validated)."""
    return get_variant(name)(**options)
