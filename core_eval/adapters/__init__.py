"""Architecture knowledge as data: one small :class:`Family` entry per model family.

An entry says where the language model's decoder layers live, what the attention module and its
output projection are called, which config holds the head counts and which config fields hold
the image / video token ids. Everything that touches model internals goes through
:func:`adapter_for` (a loaded model) or :func:`shape_from_config` (a config, before any weights
are loaded), so a family is one :class:`Family` record. Built-ins live one module each in
``core_eval/adapters/families/``; outside families come through ``family=pkg.module:obj`` (every
entry point takes it) or the ``core_eval.families`` entry-point group.

Unknown architectures raise :class:`UnsupportedArchitectureError`, naming the architecture and
listing the supported families.
"""

from core_eval.adapters.base import (
    ENTRY_POINT_GROUP,
    MASK_KINDS,
    Family,
    ModelAdapter,
    ModelShape,
    TinyRecipe,
    UnsupportedArchitectureError,
    adapter_for,
    bind_family,
    bound_family,
    check_requirements,
    family_for_config,
    family_source,
    register_family,
    registered_families,
    resolve_family,
    shape_from_config,
)
from core_eval.adapters import families as _families  # noqa: F401  (registers the built-ins)

__all__ = [
    "ENTRY_POINT_GROUP",
    "MASK_KINDS",
    "Family",
    "ModelAdapter",
    "ModelShape",
    "TinyRecipe",
    "UnsupportedArchitectureError",
    "adapter_for",
    "bind_family",
    "bound_family",
    "check_requirements",
    "family_for_config",
    "family_source",
    "register_family",
    "registered_families",
    "resolve_family",
    "shape_from_config",
]
