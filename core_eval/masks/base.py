"""What every mask variant builds on: the :class:`Variant` base class and the :class:`Patcher`.

A variant is one small class in its own module. It declares its options, checks them (and the
head set) against the model shape before any weights load, and installs itself through the
:class:`Patcher`, which offers exactly two mechanisms:

* ``o_proj_input(layer, fn)``: rewrite the per-head attention output ``(B, T, H, D)`` just before
  the output projection (a forward pre-hook on ``o_proj``; works with any attention backend);
* ``attention(layer, patch)``: attach an :class:`~core_eval.attention.AttentionPatch`, which
  switches the language model (never the vision tower) to the ``core_eval`` attention backend.

* ``compute(layer, fn)``: replace the layer's whole attention computation (hybrid sparse);
* ``permute_heads(layer, full_kv)``: an exact load-time reordering of the layer's q/k/v/o
  projections that puts the given KV heads (and their query heads) first;
* ``wrap_generate(fn)``: wrap ``model.generate`` (e.g. to pass a custom cache).

All act in prefill and in every decode step. ``Patcher.remove()`` undoes everything.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from core_eval.adapters import ModelAdapter, ModelShape
from core_eval.attention import (
    SequenceTracker,
    allowed_keys,
    attach_patch,
    detach_patches,
    ensure_registered,
    set_compute,
)
from core_eval.attention.reference import gather_heads


class VariantError(ValueError):
    """Bad variant name or options."""


class Variant:
    """Base class of a mask variant.

    Subclasses set ``name``, ``kind`` (``"ablation"`` or ``"sparse"``), ``description`` and
    ``options`` (``{option: (type, default, help)}``), and implement :meth:`apply`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "ablation"
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, tuple[type, Any, str]]] = {}

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise VariantError(f"variant {self.name!r} got unknown option(s) {unknown}; valid options: {valid}")
        self.config = {}
        for key, (typ, default, _help) in self.options.items():
            value = options.get(key, default)
            if value is not None and not isinstance(value, typ):
                try:
                    value = typ(value)
                except (TypeError, ValueError):
                    raise VariantError(
                        f"variant {self.name!r}: option {key}={value!r} is not a valid {typ.__name__}"
                    ) from None
            self.config[key] = value

    def check(self, shape: ModelShape, heads: list[tuple[int, int]]) -> None:
        """Raise :class:`VariantError` if this variant cannot run on ``shape`` (before loading)."""

    def apply(self, patcher: "Patcher", heads: dict[int, torch.Tensor]) -> None:
        """Install on the model. ``heads``: layer -> LongTensor of query-head indices (non-empty)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "options": dict(self.config)}


class ReplaceHeads:
    """An attention patch that recomputes a few heads with ``compute`` and splices them in.

    ``compute(query, key, value, allowed, scaling) -> (B, h, q, D)`` receives only the selected
    heads (key/value already mapped to each query head's KV head) and the boolean mask of keys
    the model allows (``(B|1, 1, q, kv)``). Other heads keep the exact SDPA output.
    """

    def __init__(self, heads: torch.Tensor, compute: Callable):
        self.heads = heads
        self.compute = compute

    def __call__(self, module, query, key, value, attention_mask, out, scaling):
        heads = self.heads.to(query.device)
        q, k, v = gather_heads(query, key, value, heads)
        allowed = allowed_keys(attention_mask, query.shape[2], key.shape[2], query.device)
        sub = self.compute(q, k, v, allowed, scaling)
        return out.index_copy(2, heads, sub.transpose(1, 2).to(out.dtype))


class Patcher:
    """Installs hooks and attention patches on one loaded model; :meth:`remove` undoes them."""

    def __init__(self, model: torch.nn.Module, adapter: ModelAdapter):
        self.model = model
        self.adapter = adapter
        self._handles: list = []
        self._patched: list[tuple[torch.nn.Module, object]] = []
        self._tracker: SequenceTracker | None = None
        self._previous_backend: str | None = None
        self._computed: list[torch.nn.Module] = []
        self._permuted: list[tuple[int, torch.Tensor]] = []
        self._wrapped_generate = False

    @property
    def backend(self) -> str:
        return self.adapter.text_config._attn_implementation

    def o_proj_input(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Rewrite ``o_proj``'s input of ``layer``, seen as ``(B, T, H, D)`` per-head outputs."""
        shape = self.adapter.shape

        def pre_hook(module, args):
            x = args[0]
            heads = x.view(*x.shape[:-1], shape.num_heads, shape.head_dim)
            return (fn(heads).reshape(x.shape),) + tuple(args[1:])

        self._handles.append(self.adapter.o_proj(layer).register_forward_pre_hook(pre_hook))

    def _use_core_eval_attention(self, what: str) -> None:
        """Switch the LM to the core_eval attention function (once), refusing flash attention:
        core_eval's function is SDPA / FlexAttention based and needs the model's explicit mask, so
        it would silently replace the flash kernels asked for."""
        if self._previous_backend is None and self.backend != ensure_registered():
            if str(self.backend).startswith("flash_attention"):
                raise VariantError(
                    f"{what} changes the attention computation, which core_eval does with its own SDPA / "
                    f"FlexAttention function, but the model was loaded with attn_implementation={self.backend!r}. "
                    'Load it with attn_implementation="sdpa" (the default); the zero and mean ablations work on '
                    "any attention backend.")
            self._previous_backend = self.backend
            self.adapter.set_lm_attention(ensure_registered())

    def attention(self, layer: int, patch) -> None:
        """Attach ``patch`` to ``layer``'s attention; the LM switches to the core_eval backend."""
        self._use_core_eval_attention(f"attention patch {type(patch).__name__}")
        module = self.adapter.attention(layer)
        attach_patch(module, patch)
        self._patched.append((module, patch))

    def compute(self, layer: int, fn) -> None:
        """Replace ``layer``'s attention computation by ``fn`` (see ``set_compute``)."""
        self._use_core_eval_attention("hybrid sparse attention")
        module = self.adapter.attention(layer)
        set_compute(module, fn)
        self._computed.append(module)

    def permute_heads(self, layer: int, full_kv: list[int]) -> None:
        """Put KV heads ``full_kv`` (and their query heads) first in ``layer``; undone by remove()."""
        from core_eval.sparse.permute import permute_layer

        s, names = self.adapter.shape, (*self.adapter.family.qkv, self.adapter.family.o_proj)
        perm = permute_layer(self.adapter.attention(layer), full_kv, s.num_kv_heads, s.groups, s.head_dim, names)
        self._permuted.append((layer, perm))

    def model_pre_hook(self, fn: Callable) -> None:
        """``fn(module, args, kwargs)`` before every forward of the whole model (prefill and each
        decode step); for checks only (its return value is ignored). Removed by remove()."""

        def hook(module, args, kwargs):
            fn(module, args, kwargs)

        self._handles.append(self.model.register_forward_pre_hook(hook, with_kwargs=True))

    def wrap_generate(self, wrapper) -> None:
        """``model.generate = wrapper(original_generate)`` until remove()."""
        if "generate" in self.model.__dict__:
            raise VariantError("generate() is already wrapped by another intervention")
        self.model.generate = wrapper(self.model.generate)
        self._wrapped_generate = True

    @property
    def tracker(self) -> SequenceTracker:
        """Visual-token positions of the current batch (installed on first use)."""
        if self._tracker is None:
            self._tracker = SequenceTracker(self.adapter.visual_mask).install(self.model)
        return self._tracker

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module, patch in self._patched:
            detach_patches(module, [patch])
        self._patched.clear()
        for module in self._computed:
            set_compute(module, None)
        self._computed.clear()
        if self._permuted:
            from core_eval.sparse.permute import unpermute_layer

            s, names = self.adapter.shape, (*self.adapter.family.qkv, self.adapter.family.o_proj)
            for layer, perm in reversed(self._permuted):
                unpermute_layer(self.adapter.attention(layer), perm, s.groups, s.head_dim, names)
            self._permuted.clear()
        if self._wrapped_generate:
            del self.model.__dict__["generate"]
            self._wrapped_generate = False
        if self._tracker is not None:
            self._tracker.remove()
            self._tracker = None
        if self._previous_backend is not None:
            self.adapter.set_lm_attention(self._previous_backend)
            self._previous_backend = None
