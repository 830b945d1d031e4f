"""The shared sample key of a task: which runs of different harnesses scored the same probe samples.

lm-eval names a probe task ``core_grid_needle`` (``--limit N`` takes its first N samples);
core_eval's VLMEvalKit datasets name the same samples ``core_grid_needle-n8`` (the first 8) and
another sample draw ``core_grid_needle-s3`` (seed 3). The key drops only the ``-n<N>`` suffix,
so ``core_grid_needle`` and ``core_grid_needle-n8`` share the key ``core_grid_needle`` and their
samples pair on the probe sample id (lm-eval's ``doc_id`` = VLMEvalKit's ``index``), while a
``-s<SEED>`` draw keeps its own key. Names that are not core_eval probe datasets pass through.
The naming follows :mod:`core_eval.integrations.vlmeval` (``-n<N>`` then ``-s<SEED>``).
"""

from __future__ import annotations

import re

_PROBE_NAME = re.compile(r"(?P<base>core_[a-z0-9_]+?)(?:-n(?P<n>\d+))?(?:-s(?P<seed>\d+))?")


def sample_key(task: str) -> str:
    """``core_grid_needle-n8`` -> ``core_grid_needle``; ``core_x-n8-s3`` -> ``core_x-s3``; others unchanged."""
    m = _PROBE_NAME.fullmatch(str(task))
    if not m:
        return str(task)
    return m.group("base") + (f"-s{m.group('seed')}" if m.group("seed") is not None else "")
