"""Offline factory of tiny random models with real processors, saved like real checkpoints.

``build_tiny(name, out_dir)`` writes a directory that loads exactly like a Hub checkpoint:
``AutoProcessor`` + ``AutoModelForImageTextToText`` for the vision-language families,
``AutoTokenizer`` + ``AutoModelForCausalLM`` for the text-only ones. ``tiny_model_dir`` builds
once into a cache. Nothing is downloaded. The recipes are the families' own
(``Family.tiny``, in ``core_eval/adapters/families/``): every registered family with a recipe,
an outside one included, can be built and is part of the test matrix.

Language model defaults: hidden 64, 3 layers, 4 heads (head_dim 16), intermediate 128,
vocab = tokenizer size rounded up to a multiple of 64, float32; GQA (2 kv heads) where the
recipe says ``gqa``, else MHA. Vision towers: hidden 32, 2 layers.

Overrides (``build_tiny(..., **overrides)``; short aliases in brackets):

- ``num_hidden_layers`` [layers], ``num_attention_heads`` [heads],
  ``num_key_value_heads`` [kv_heads], ``hidden_size`` [hidden],
  ``intermediate_size`` [intermediate]: language model shape. ``head_dim`` is always
  ``hidden_size // num_attention_heads``. If only ``heads`` is given, kv heads follow the
  family's scheme (MHA: = heads, GQA: heads // 2).
- ``initializer_range`` [init_std]: init std of all weights (default 0.02).
- ``max_position_embeddings`` (default 4096).
- ``vision_layers``: number of vision-tower layers (default 2).
- a recipe's ``extra_overrides`` (gemma3: ``sliding_window``, default 4096, so it never bites at
  test lengths, and ``layer_types``, default every third layer full, the others sliding).

Processors are the families' real classes, all torchvision-backed in transformers 5.x, so
building needs torchvision. Visual tokens per example image: ``TinyRecipe.image_tokens``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


FACTORY_VERSION = "2"

_ALIASES = {
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "init_std": "initializer_range",
}
_KEYS = {
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "initializer_range",
    "max_position_embeddings",
    "vision_layers",
}


def recipes() -> dict:
    """Tiny name -> ``(Family, TinyRecipe)`` over every registered family (built-in and outside)."""
    from core_eval.adapters import registered_families

    return {r.name: (f, r) for f in registered_families().values() for r in f.tiny}


def _recipe(name: str):
    table = recipes()
    if name not in table:
        raise ValueError(f"unknown tiny model {name!r}; known: {tuple(table)}")
    return table[name]


def _builtin(vlm: bool) -> tuple[str, ...]:
    from core_eval.adapters.base import _BUILTINS

    return tuple(r.name for f in _BUILTINS.values() for r in f.tiny if (r.image_tokens is not None) == vlm)


#: The built-in families' tiny models (the test matrix).
VLM_FAMILIES: tuple[str, ...] = _builtin(True)
TEXT_FAMILIES: tuple[str, ...] = _builtin(False)
FAMILIES: tuple[str, ...] = VLM_FAMILIES + TEXT_FAMILIES


# --------------------------------------------------------------------------- helpers
def _resolve_overrides(recipe, overrides: dict[str, Any]) -> dict[str, Any]:
    o: dict[str, Any] = {}
    allowed = _KEYS | set(recipe.extra_overrides)
    for k, v in overrides.items():
        k = _ALIASES.get(k, k)
        if k not in allowed:
            raise TypeError(f"build_tiny({recipe.name!r}): unknown override {k!r}; allowed: "
                            f"{sorted(allowed | set(_ALIASES))}")
        o[k] = v
    heads = o.get("num_attention_heads", 4)
    default_kv = max(1, heads // 2) if recipe.gqa else heads
    lm = {
        "hidden_size": o.get("hidden_size", 64),
        "num_hidden_layers": o.get("num_hidden_layers", 3),
        "num_attention_heads": heads,
        "num_key_value_heads": o.get("num_key_value_heads", default_kv),
        "intermediate_size": o.get("intermediate_size", 128),
        "initializer_range": o.get("initializer_range", 0.02),
        "max_position_embeddings": o.get("max_position_embeddings", 4096),
    }
    if lm["hidden_size"] % heads or heads % lm["num_key_value_heads"]:
        raise ValueError(f"build_tiny: incompatible shape {lm}")
    lm["head_dim"] = lm["hidden_size"] // heads
    extra = {k: o[k] for k in recipe.extra_overrides if k in o}
    return {"lm": lm, "vision_layers": o.get("vision_layers", 2), **extra}


# --------------------------------------------------------------------------- public API
def build_tiny(family: str, out_dir: str | os.PathLike, *, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny random ``family`` model with its processor and save both into ``out_dir``.

    Weights are float32 and bit-identical for the same seed and overrides. See the module
    docstring for the accepted ``overrides``. Returns ``Path(out_dir)``.
    """
    from transformers import GenerationConfig

    _, recipe = _recipe(family)
    params = _resolve_overrides(recipe, overrides)
    config, processor, eos_ids = recipe.build(params)
    for c in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if c is not None:
            c.dtype = torch.float32
    init_std = params["lm"]["initializer_range"]
    config.initializer_range = init_std
    if getattr(config, "vision_config", None) is not None:
        config.vision_config.initializer_range = init_std

    text_cfg = config.get_text_config()
    gen = GenerationConfig(
        bos_token_id=text_cfg.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=text_cfg.pad_token_id,
        do_sample=False,
    )

    import transformers

    cls = getattr(transformers, recipe.model_class)
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
    finally:
        torch.set_default_dtype(prev_dtype)
    model.eval()
    model.generation_config = gen

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@contextlib.contextmanager
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _source_hash(name: str) -> str:
    """Hash of the factory's sources and of the module defining ``name``'s recipe."""
    import inspect

    h = hashlib.sha256()
    files = sorted(Path(__file__).parent.glob("*.py"))
    src = inspect.getsourcefile(_recipe(name)[1].build)
    for f in files + ([Path(src)] if src else []):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_root() -> Path:
    """Cache directory: ``$CORE_EVAL_TINY_CACHE`` or ``~/.cache/core_eval/tiny``."""
    env = os.environ.get("CORE_EVAL_TINY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "core_eval" / "tiny"


def cache_key(family: str, *, seed: int = 0, **overrides: Any) -> str:
    """Directory name: family, factory version, transformers version, source hash, args."""
    import transformers

    key = f"{family}-f{FACTORY_VERSION}-tf{transformers.__version__}-{_source_hash(family)}"
    if seed or overrides:
        args = repr((seed, sorted(overrides.items())))
        key += "-" + hashlib.sha256(args.encode()).hexdigest()[:10]
    return key


_MARKER = ".core_eval_complete"


def tiny_model_dir(family: str, *, seed: int = 0, **overrides: Any) -> Path:
    """Return a cached ``build_tiny(family, ...)`` directory, building it on first use.

    Builds into a temporary sibling and renames it into place atomically, so concurrent or
    killed builds never leave a half-written model under the final name.
    """
    _recipe(family)
    root = cache_root()
    final = root / cache_key(family, seed=seed, **overrides)
    if (final / _MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        build_tiny(family, tmp, seed=seed, **overrides)
        (tmp / _MARKER).write_text(final.name)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _MARKER).is_file():  # a broken leftover, not a concurrent winner
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _clean_stale_tmp(root: Path, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def is_vlm(family: str) -> bool:
    """True for the image-text tiny models."""
    return _recipe(family)[1].image_tokens is not None
