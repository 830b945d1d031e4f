"""Where the shipped data folders are, in a wheel install and in a source / editable checkout.

A wheel carries ``task_configs/`` and ``head_masks/`` inside the package (``core_eval/task_configs``,
``core_eval/head_masks``); an editable install or a checkout has them at the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"core_eval's {name}/ folder is missing from {_PKG} and {_PKG.parent}; reinstall core-eval")


def tasks_dir() -> Path:
    """lm-eval task configs: pass to ``lm_eval --include_path``."""
    return _find("task_configs")


def head_masks_dir() -> Path:
    """Shipped head specs."""
    return _find("head_masks")
