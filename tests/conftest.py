"""Shared pytest fixtures: tiny offline models (see ``core_eval.testing``).

``tiny_dir("llava")`` -> Path of a cached tiny checkpoint (built on first use, into
``$CORE_EVAL_TINY_CACHE`` or ``~/.cache/core_eval/tiny``; a per-session temp dir if that is
not writable). Extra keyword arguments (``seed=``, overrides such as ``layers=2``) give a
separately cached variant. Parametrize over ``VLM_FAMILIES`` / ``ALL_FAMILIES``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

try:
    import core_eval  # noqa: F401
except ImportError:  # plain `pytest` without an install: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_eval.testing import (
    FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    cache_root,
    tiny_model_dir,
)

ALL_FAMILIES: tuple[str, ...] = FAMILIES
__all__ = ["ALL_FAMILIES", "TEXT_FAMILIES", "VLM_FAMILIES"]


def pytest_configure(config):
    """Under pytest-xdist (the README's test command runs ``-n auto``) the workers share the cores:
    give each worker's torch its share of threads instead of every worker using them all."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def accelerate_launch(*args: str) -> list[str]:
    """``accelerate launch`` of 2 CPU processes on a free port (tests may run side by side under
    pytest-xdist, and two launches on accelerate's default port 29500 would collide)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
            "--dynamo_backend", "no", *args]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory fixture: ``tiny_dir(family, **kwargs) -> Path`` (cached tiny checkpoint)."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        os.environ["CORE_EVAL_TINY_CACHE"] = str(tmp_path_factory.mktemp("tiny_cache"))

    def get(family: str, **kwargs) -> Path:
        return tiny_model_dir(family, **kwargs)

    return get


@pytest.fixture
def weightless(tmp_path, tiny_dir):
    """A checkpoint folder with config and processor but no weights: loading it would fail."""
    src = tiny_dir("llava")
    dst = tmp_path / "weightless"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dir):
    """Factory fixture: ``tiny_loaded(family) -> (model, processor, inputs)``, loaded once per
    session; ``inputs`` is a left-padded batch of 2 prompts with images. Tests that intervene must
    restore the model (``Intervention.remove()`` in a ``finally``)."""
    from core_eval.testing import example_inputs, load_tiny

    cache = {}

    def get(family: str):
        if family not in cache:
            model, proc = load_tiny(tiny_dir(family))
            cache[family] = (model, proc, example_inputs(tiny_dir(family), batch=2, processor=proc))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_sdpa_eager(tiny_dir):
    """Factory fixture: ``tiny_sdpa_eager(family) -> (dir, sdpa model, eager model, processor)``,
    the same weights loaded twice (the eager one is the ``output_attentions`` reference)."""
    from core_eval.testing import load_tiny

    cache = {}

    def get(family: str):
        if family not in cache:
            d = tiny_dir(family)
            model, proc = load_tiny(d)
            eager, _ = load_tiny(d, attn_implementation="eager")
            cache[family] = (d, model, eager, proc)
        return cache[family]

    return get


def visual_or_stand_in(model, ids):
    """Visual-token mask ``(B, T)`` of ``ids``; for a text model, prompt positions 20..59 stand in."""
    import torch

    from core_eval.adapters import adapter_for

    v = adapter_for(model).visual_mask(ids)
    if not v.any():
        v = torch.zeros_like(ids, dtype=torch.bool)
        v[:, 20:60] = True
    return v


@pytest.fixture(scope="session")
def tu():
    """``task_configs/utils.py`` loaded by path, as lm-eval loads it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "task_configs" / "utils.py"
    spec = importlib.util.spec_from_file_location("core_task_configs_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def grow_inputs(model, inputs, seq):
    """Inputs for one full forward over ``seq`` (prompt + generated tokens): ``input_ids = seq`` and
    every per-token side input grown the way ``generate`` grows it. ``attention_mask``: 1;
    ``token_type_ids`` of a prefix-LM family (PaliGemma): 1, generated tokens are the causal suffix;
    everything else (Gemma 3 ``token_type_ids``, Qwen ``mm_token_type_ids``): 0, i.e. text."""
    import torch

    from core_eval.adapters import adapter_for

    T = inputs["input_ids"].shape[1]
    n = seq.shape[1] - T
    prefix_lm = adapter_for(model).family.attention_mask == "prefix_lm"
    out = dict(inputs)
    out["input_ids"] = seq
    for key, val in inputs.items():
        if key != "input_ids" and isinstance(val, torch.Tensor) and val.shape[:2] == (seq.shape[0], T):
            fill = 1 if key == "attention_mask" or (key == "token_type_ids" and prefix_lm) else 0
            out[key] = torch.cat([val, torch.full((val.shape[0], n), fill, dtype=val.dtype)], 1)
    return out
