"""Per-head mean outputs ``(L, H, D)`` on a reference set, for ``mean`` ablation.

The mean is taken over every non-padding token position of every reference input, of the
per-head attention output that enters ``o_proj``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from core_eval.adapters import adapter_for


@torch.no_grad()
def compute_head_means(model, batches: Iterable[dict], *, progress: bool = True) -> torch.Tensor:
    """Mean per-head ``o_proj`` input over the non-padding tokens of ``batches``.

    ``batches`` yields model inputs (processor outputs) with an ``attention_mask``.
    Returns float32 ``(num_layers, num_heads, head_dim)``.
    """
    from tqdm.auto import tqdm

    adapter = adapter_for(model)
    s = adapter.shape
    sums = torch.zeros(s.num_layers, s.num_heads, s.head_dim, dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    current: dict[str, torch.Tensor] = {}

    def make_hook(layer):
        def hook(module, args):
            x = args[0].view(*args[0].shape[:-1], s.num_heads, s.head_dim).double()
            m = current["mask"].to(x.device, x.dtype)[..., None, None]  # (B, T, 1, 1)
            sums[layer] += (x * m).sum(dim=(0, 1)).cpu()

        return hook

    handles = [adapter.o_proj(l).register_forward_pre_hook(make_hook(l)) for l in range(s.num_layers)]
    try:
        for batch in tqdm(batches, desc="head means", disable=not progress):
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(batch["input_ids"])
            current["mask"] = mask
            count += mask.sum().double().cpu()
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ValueError("compute_head_means got no tokens (empty reference set)")
    return (sums / count).float()


def means_path_for(spec_path: str | os.PathLike) -> Path:
    """Where the means of a spec live: ``<spec stem>.means.safetensors`` beside it."""
    p = Path(spec_path)
    return p.with_name(p.stem + ".means.safetensors")


def save_head_means(path: str | os.PathLike, means: torch.Tensor, metadata: dict[str, str] | None = None) -> Path:
    """Write atomically (temp file + rename)."""
    from core_eval._io import atomic_path

    with atomic_path(path) as tmp:
        save_file({"head_means": means.contiguous().float()}, str(tmp), metadata=metadata or {})
    return Path(path)


class HeadMeansError(ValueError):
    """A head-means file that cannot be used (the message names the file and the fix)."""


_FIX = ("pass a file written by core_eval.means.save_head_means, or drop means= to compute them on "
        "generated probes")


def _open_means(path: str | os.PathLike):
    """``(metadata, shape of head_means)`` from the file header, or :class:`HeadMeansError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head-means file {path} does not exist; compute it with core_eval.means.compute_head_means")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = dict(f.metadata() or {}), list(f.keys())
            shape = tuple(f.get_slice("head_means").get_shape()) if "head_means" in keys else None
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for bad files)
        raise HeadMeansError(f"means={path} is not a safetensors head-means file ({type(e).__name__}: {e}); "
                             f"{_FIX}") from None
    if shape is None:
        raise HeadMeansError(f"means={path} holds no 'head_means' tensor (has: {', '.join(keys) or 'nothing'}); {_FIX}")
    if len(shape) != 3:
        raise HeadMeansError(f"means={path}: head_means has shape {shape}, not (layers, heads, head_dim); {_FIX}")
    return meta, shape


def head_means_metadata(path: str | os.PathLike, shape=None) -> dict[str, str]:
    """The string metadata stored with the means (e.g. ``probes``, ``n``, ``probe_hash``); checks the
    file is a head-means file, for the model ``shape`` (a ``ModelShape``) when given
    (:class:`HeadMeansError` naming it otherwise). Reads the header only."""
    meta, got = _open_means(path)
    if shape is not None and got != (shape.num_layers, shape.num_heads, shape.head_dim):
        raise HeadMeansError(f"means={path} has shape {got} but the model needs ({shape.num_layers}, "
                             f"{shape.num_heads}, {shape.head_dim}) = (layers, heads, head_dim); {_FIX}")
    return meta


def load_head_means(path: str | os.PathLike) -> torch.Tensor:
    _open_means(path)
    return load_file(str(path))["head_means"]
