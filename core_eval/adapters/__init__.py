"""Architecture knowledge as data: one small :class:`Family` entry per model family.

An entry says where the language model's decoder layers live, what the attention module and its
output projection are called, which config holds the head counts and which config fields hold
the image / video token ids. Everything that touches model internals goes through
:func:`adapter_for` (a loaded model) or :func:`shape_from_config` (a config, before any weights
are loaded), so adding a family is one :func:`register_family` call::

    register_family(Family(
        name="my_vlm", model_types=("my_vlm",),
        layers="model.language_model.layers",   # dotted path from the top-level model
    ))

Unknown architectures raise :class:`UnsupportedArchitectureError`, naming the architecture and
listing the supported families.
"""

from core_eval.adapters.base import (
    Family,
    ModelAdapter,
    ModelShape,
    UnsupportedArchitectureError,
    adapter_for,
    family_for_config,
    register_family,
    registered_families,
    shape_from_config,
)
from core_eval.adapters import families as _families  # noqa: F401  (registers the built-ins)

__all__ = [
    "Family",
    "ModelAdapter",
    "ModelShape",
    "UnsupportedArchitectureError",
    "adapter_for",
    "family_for_config",
    "register_family",
    "registered_families",
    "shape_from_config",
]
