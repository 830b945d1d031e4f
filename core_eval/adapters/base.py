"""The :class:`Family` record, the family registry and the adapter bound to a loaded model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


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

# Architectures we know and deliberately do not support, with the reason in words.
_UNSUPPORTABLE = {
    "mllama": "Mllama reads images through cross-attention layers, not visual tokens in the "
    "self-attention sequence, so RAM and visual masks are undefined for it",
}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add a family entry. ``replace=True`` overrides an existing entry of the same name."""
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"family {family.name!r} is already registered (pass replace=True)")
    _FAMILIES[family.name] = family
    for mt in family.model_types:
        _BY_MODEL_TYPE[mt] = family
    return family


def registered_families() -> dict[str, Family]:
    return dict(_FAMILIES)


def _supported_list() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in _FAMILIES.values())


def family_for_config(config) -> Family:
    """The :class:`Family` for a transformers config, or a clear error."""
    mt = getattr(config, "model_type", None)
    if mt in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[mt]
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    why = _UNSUPPORTABLE.get(mt)
    if why:
        raise UnsupportedArchitectureError(f"architecture {arch} (model_type={mt!r}) is not supported: {why}.")
    raise UnsupportedArchitectureError(
        f"architecture {arch} (model_type={mt!r}) has no core_eval adapter. Supported families: "
        f"{_supported_list()}. To add one, call core_eval.adapters.register_family(Family(...)) "
        "with the dotted path to its decoder layers (see core_eval/adapters/families.py)."
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


def shape_from_config(config) -> ModelShape:
    """LM attention shape from a config alone (no weights needed)."""
    family = family_for_config(config)
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


def adapter_for(model: nn.Module) -> ModelAdapter:
    """Bind a loaded model to its family entry, checking that the layer path resolves."""
    config = model.config
    family = family_for_config(config)
    shape = shape_from_config(config)
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
