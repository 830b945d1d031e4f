"""The :class:`Family` record, the family registry (built-ins, entry points, dotted paths) and the
adapter bound to a loaded model."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Entry-point group through which installed distributions add families (objects: a Family or a list).
ENTRY_POINT_GROUP = "core_eval.families"
#: What a family may declare about the mask its language model builds (DESIGN §8).
MASK_KINDS = {
    "causal": "causal everywhere",
    "bidirectional_image": "causal, but an image's tokens see each other both ways",
    "prefix_lm": "the whole prompt (images + text) is bidirectional, the answer causal",
}


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no :class:`Family` entry (or cannot be supported)."""


@dataclass(frozen=True)
class Family:
    """Per-family facts, as data.

    Attributes:
        name: short family name used in messages and head specs.
        model_types: ``config.model_type`` values this entry covers.
        layers: dotted attribute path from the top-level model to the LM decoder ``ModuleList``.
        text_config: attribute of the top-level config holding the LM config (``None``: text-only).
        vision: dotted path to the vision tower (never touched unless asked; ``None``: text-only).
        attention: attribute of a decoder layer holding the self-attention module.
        o_proj: attribute of the attention module holding the output projection.
        qkv: attributes of the attention module holding the q, k and v projections.
        image_token_fields: config fields (top-level config) holding image token ids.
        video_token_fields: config fields holding video token ids.
        notes: one line shown in ``core-eval families``.
        region: :class:`~core_eval.adapters.regions.RegionRule`, how image patches become LM visual
            tokens (``None``: no region mapping, e.g. text-only).
        attention_mask: the LM's own mask, one of :data:`MASK_KINDS`. Variants never re-derive it
            (they start from the mask the model passes and only remove keys); tests check this
            declaration against the model's real mask.
        requires: dotted fields the module reads, ``config.<path>`` or ``processor.<path>``; a
            checkpoint lacking one fails before weights load, naming the field.
        tiny: :class:`TinyRecipe` entries: offline tiny checkpoints of this family for the tests.
        teacher_forcing: ``(processor, prompts, answers, images, **kwargs) -> BatchFeature`` for
            families whose processor takes the answer separately (``None``: answer text appended
            to the prompt, which is right for every built-in family).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    text_config: str | None = "text_config"
    vision: str | None = "model.vision_tower"
    attention: str = "self_attn"
    o_proj: str = "o_proj"
    qkv: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj")
    image_token_fields: tuple[str, ...] = ("image_token_id",)
    video_token_fields: tuple[str, ...] = ()
    notes: str = ""
    region: Any = None
    attention_mask: str = "causal"
    requires: tuple[str, ...] = ()
    tiny: tuple["TinyRecipe", ...] = ()
    teacher_forcing: Callable | None = None

    def __post_init__(self):
        if self.attention_mask not in MASK_KINDS:
            raise ValueError(f"family {self.name!r}: attention_mask={self.attention_mask!r}; use one of {sorted(MASK_KINDS)}")
        bad = [r for r in self.requires if not r.startswith(("config.", "processor."))]
        if bad:
            raise ValueError(f"family {self.name!r}: requires entries must start with 'config.' or 'processor.': {bad}")


@dataclass(frozen=True)
class TinyRecipe:
    """How to build an offline tiny random checkpoint of a family (``core_eval.testing.build_tiny``).

    Attributes:
        name: the tiny model's name (``build_tiny(name, ...)``; usually the family name).
        build: ``params -> (config, processor_or_tokenizer, eos_ids)``; ``params`` has ``lm`` (LM
            shape dict), ``vision_layers`` and any ``extra_overrides`` the caller gave.
        model_class: transformers class name the checkpoint is built with.
        gqa: default to 2 KV heads for 4 query heads (else MHA).
        image_tokens: visual tokens per ``synthetic_image()`` (``EXAMPLE_IMAGE_SIZE``); ``None``: text-only.
        extra_overrides: override keys beyond the LM shape this recipe accepts.
    """

    name: str
    build: Callable[[dict], tuple]
    model_class: str
    gqa: bool = True
    image_tokens: int | None = None
    extra_overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelShape:
    """Attention shape of the language model: what a head spec must match."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def groups(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    def as_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
        }


_FAMILIES: dict[str, Family] = {}
_BY_MODEL_TYPE: dict[str, Family] = {}
_FROM_ENTRY_POINTS: dict[str, str] = {}  # family name -> "dist: entry point" it came from
_entry_points_loaded = False

# Architectures we know and deliberately do not support, with the reason in words.
_UNSUPPORTABLE = {
    "mllama": "Mllama reads images through cross-attention layers, not visual tokens in the "
    "self-attention sequence, so RAM and visual masks are undefined for it",
}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add a family entry. ``replace=True`` overrides an existing entry of the same name."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a core_eval.adapters.Family, got {type(family).__name__}")
    old = _FAMILIES.get(family.name)
    if old is not None and old is not family and not replace:
        raise ValueError(f"family {family.name!r} is already registered (pass replace=True)")
    if old is not None:
        for mt in old.model_types:
            if _BY_MODEL_TYPE.get(mt) is old:
                del _BY_MODEL_TYPE[mt]
    _FAMILIES[family.name] = family
    for mt in family.model_types:
        _BY_MODEL_TYPE[mt] = family
    return family


def _load_entry_points() -> None:
    """Register the families installed distributions declare under :data:`ENTRY_POINT_GROUP` (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"{getattr(ep.dist, 'name', '?')}: {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must say which one it is
            raise UnsupportedArchitectureError(
                f"the {ENTRY_POINT_GROUP} entry point ({where}) failed to import: {type(e).__name__}: {e}. "
                "Fix or uninstall that distribution."
            ) from e
        for fam in _as_families(obj, where):
            register_family(fam, replace=True)
            _FROM_ENTRY_POINTS[fam.name] = where


def _as_families(obj, where: str) -> list[Family]:
    if callable(obj) and not isinstance(obj, Family):
        obj = obj()
    items = [obj] if isinstance(obj, Family) else list(obj) if isinstance(obj, (list, tuple)) else None
    if not items or not all(isinstance(f, Family) for f in items):
        raise UnsupportedArchitectureError(
            f"{where} is not a core_eval Family (nor a list of them, nor a function returning one); "
            f"got {type(obj).__name__}"
        )
    return items


def registered_families() -> dict[str, Family]:
    """Every family: built-ins first, then those from entry points and dotted paths."""
    _load_entry_points()
    return dict(_FAMILIES)


_BUILTINS: dict[str, Family] = {}  # filled once the built-in modules are imported


def mark_builtins() -> None:
    """Remember the families registered so far as the built-ins (``core_eval.adapters.families``)."""
    _BUILTINS.update(_FAMILIES)


def family_source(family: Family) -> str:
    """Where a family comes from: ``built-in``, ``entry point <dist: ...>`` or ``outside``."""
    if family.name in _FROM_ENTRY_POINTS:
        return f"entry point {_FROM_ENTRY_POINTS[family.name]}"
    return "built-in" if _BUILTINS.get(family.name) is family else "outside"


def resolve_family(ref: Any) -> Family:
    """A :class:`Family` from a family, its registered name or a dotted path ``pkg.module:obj``.

    A dotted path is imported and its object (a ``Family``, or a function returning one) is
    registered, so later lookups by name (a tiny recipe, ``core-eval families``) find it. A
    ``Family`` object is used as given, unregistered. Models and processors loaded through core_eval
    carry their family (:func:`bind_family`), so neither needs the registry afterwards.
    """
    if isinstance(ref, Family):
        return ref
    if not isinstance(ref, str) or not ref:
        raise UnsupportedArchitectureError(f"family={ref!r}: pass a family name, a Family or 'pkg.module:obj'")
    if ":" in ref:
        mod_name, _, attr = ref.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise UnsupportedArchitectureError(
                f"family={ref}: cannot import {attr!r} from module {mod_name!r} ({e}). Write family=pkg.module:obj "
                "with the module importable (installed or on PYTHONPATH) and obj a core_eval Family."
            ) from None
        (fam,) = _as_families(obj, f"family={ref}")[:1]
        if _FAMILIES.get(fam.name) is not fam:
            register_family(fam, replace=True)
        return fam
    fams = registered_families()
    if ref not in fams:
        raise UnsupportedArchitectureError(
            f"family={ref!r} is not registered. Known: {', '.join(fams)}; or pass family=pkg.module:obj, "
            f"or install a distribution with a {ENTRY_POINT_GROUP!r} entry point."
        )
    return fams[ref]


def _supported_list() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in _FAMILIES.values())


def family_for_config(config, family: Any = None) -> Family:
    """The :class:`Family` for a transformers config (or ``family``, checked against it), or a clear error."""
    mt = getattr(config, "model_type", None)
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if family is not None:
        fam = resolve_family(family)
        if fam.model_types and mt not in fam.model_types:
            raise UnsupportedArchitectureError(
                f"family {fam.name!r} covers model_type {'/'.join(fam.model_types)}, but this checkpoint is "
                f"{arch} (model_type={mt!r}); pass the family written for it, or none to pick one by model_type"
            )
        return fam
    if mt not in _BY_MODEL_TYPE:
        _load_entry_points()
    if mt in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[mt]
    why = _UNSUPPORTABLE.get(mt)
    if why:
        raise UnsupportedArchitectureError(f"architecture {arch} (model_type={mt!r}) is not supported: {why}.")
    raise UnsupportedArchitectureError(
        f"architecture {arch} (model_type={mt!r}) has no core_eval family. Supported families: "
        f"{_supported_list()}. To add one, write a Family (see README 'Add a model family') and pass "
        f"family=pkg.module:obj, or declare it under the {ENTRY_POINT_GROUP!r} entry-point group."
    )


def _lookup(config, dotted: str):
    obj = config
    for part in dotted.split("."):
        if obj is None or not hasattr(obj, part) or getattr(obj, part) is None:
            return None
        obj = getattr(obj, part)
    return obj


def check_requirements(family: Family, *, config=None, processor=None) -> None:
    """Raise :class:`UnsupportedArchitectureError` naming each ``family.requires`` field missing from
    the config (and the processor, when given): run before any weights load."""
    missing = []
    for req in family.requires:
        kind, _, path = req.partition(".")
        obj = config if kind == "config" else processor
        if obj is not None and _lookup(obj, path) is None:
            missing.append(req)
    if missing:
        what = type(config).__name__ if processor is None else f"{type(config).__name__} / {type(processor).__name__}"
        raise UnsupportedArchitectureError(
            f"family {family.name!r} needs {', '.join(missing)}, which this checkpoint's {what} lacks. "
            "The checkpoint is not what the family's module was written for: save its config / processor "
            "with a transformers version that has these fields, or write a family for it."
        )


def _text_config(config, family: Family):
    if family.text_config is None:
        return config
    sub = getattr(config, family.text_config, None)
    if sub is None:
        raise UnsupportedArchitectureError(
            f"{family.name}: config has no {family.text_config!r}; the family entry does not match this checkpoint"
        )
    return sub


def shape_from_config(config, family: Any = None) -> ModelShape:
    """LM attention shape from a config alone (no weights needed)."""
    family = family_for_config(config, family)
    tc = _text_config(config, family)
    heads = tc.num_attention_heads
    kv = getattr(tc, "num_key_value_heads", None) or heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    return ModelShape(tc.num_hidden_layers, heads, kv, head_dim)


def _resolve(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class ModelAdapter:
    """A loaded model seen through its :class:`Family` entry."""

    model: nn.Module
    family: Family
    shape: ModelShape
    image_token_ids: tuple[int, ...] = field(default_factory=tuple)
    video_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def layers(self) -> nn.ModuleList:
        return _resolve(self.model, self.family.layers)

    def attention(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.family.attention)

    def o_proj(self, layer: int) -> nn.Linear:
        return getattr(self.attention(layer), self.family.o_proj)

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` is a sliding-window attention layer (its cache keeps only the window)."""
        types = getattr(self.text_config, "layer_types", None)
        return bool(types) and types[layer] == "sliding_attention"

    @property
    def vision_tower(self) -> nn.Module | None:
        return None if self.family.vision is None else _resolve(self.model, self.family.vision)

    @property
    def text_config(self):
        return _text_config(self.model.config, self.family)

    def set_lm_attention(self, name: str) -> None:
        """Switch the language model's attention backend to ``name``; the vision tower keeps its own."""
        if self.family.text_config is None:
            self.model.set_attn_implementation(name)
        else:
            self.model.set_attn_implementation({self.family.text_config: name})

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        return self.image_token_ids + self.video_token_ids

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: positions holding an image or video token."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for tid in self.visual_token_ids:
            mask |= input_ids == tid
        return mask


_MODEL_FAMILY_ATTR = "_core_eval_family"


def bind_family(obj: Any, family: Family) -> None:
    """Record on a loaded model or processor the family it was loaded as (from the checkpoint's
    config, or the ``family=`` given), so a dotted-path family stays with it."""
    setattr(obj, _MODEL_FAMILY_ATTR, family)


def bound_family(obj: Any) -> Family | None:
    """The family :func:`bind_family` recorded on ``obj`` (``None`` if none)."""
    return getattr(obj, _MODEL_FAMILY_ATTR, None)


def adapter_for(model: nn.Module, family: Any = None) -> ModelAdapter:
    """Bind a loaded model to its family entry (``family``, else the one it was loaded as, else by
    ``model_type``), checking that the layer path resolves."""
    config = model.config
    family = family_for_config(config, family if family is not None else bound_family(model))
    shape = shape_from_config(config, family)
    try:
        layers = _resolve(model, family.layers)
    except AttributeError as e:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: family {family.name!r} expects decoder layers at "
            f"'{family.layers}', which does not exist on this class ({e}). Load the model with "
            "AutoModelForImageTextToText (or AutoModelForCausalLM for text models)."
        ) from None
    if len(layers) != shape.num_layers:
        raise UnsupportedArchitectureError(
            f"{family.name}: found {len(layers)} layers at '{family.layers}' but the config says {shape.num_layers}"
        )

    def ids(fields):
        out = []
        for f in fields:
            v = getattr(config, f, None)
            if v is not None:
                out.append(int(v))
        return tuple(out)

    return ModelAdapter(model, family, shape, ids(family.image_token_fields), ids(family.video_token_fields))
