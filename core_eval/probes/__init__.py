"""Retrieval-style visual probes with known target regions, for RAM scoring and probe tasks.

- :class:`ProbeSample` / :class:`Box`: images, plain-text question, gold answer (+ aliases) and
  half-open pixel boxes of the region the answer is read from (empty = whole image(s)).
- Synthetic families (deterministic in seed + knobs): ``grid_needle``, ``multi_image_needle``,
  ``text_lookup``, ``count_control``, the multi-page ``doc_needle``, ``video_needle`` (a video with a
  target tube); ``generate(family, n, seed=0, **knobs)``.
- User data: :func:`read_jsonl` (validates every row; documents too), :func:`write_jsonl`; datasets
  through :mod:`core_eval.probes.readers` (``hf:<path-or-id>[:split]``, ``coco:<instances.json>``,
  ``video:<rows.jsonl>``: video grounding rows, :mod:`core_eval.probes.readers.video`).
- lm-eval probe tasks of ``task_configs``: :func:`probe_tasks`, :func:`resolve_probes` (task name ->
  family + YAML knobs; :func:`load_probe` takes task names too).
- :func:`to_hf_dataset`, :func:`load_probe`, :func:`custom_dataset` (lm-eval hook).
- :func:`exact_match`, :func:`relaxed_match`; :func:`probe_set_hash` for head specs.
"""

from core_eval.probes.types import (
    Box, LazyImages, ProbeArgumentError, ProbeDataError, ProbeSample, Video, probe_set_hash,
)
from core_eval.probes.metrics import (
    NUMBER_WORDS, exact_match, first_line, normalize_answer, probe_scores, relaxed_match,
)
from core_eval.probes.families import (
    KEY_LETTERS, KEY_WORDS, PROBE_FAMILIES, count_control, doc_needle, family_knobs, generate, grid_needle,
    multi_image_needle, text_lookup,
)
from core_eval.probes.video import video_needle
from core_eval.probes.jsonl import read_jsonl, write_jsonl
from core_eval.probes.readers import is_source, read_source
from core_eval.probes.tasks import ProbeTask, probe_tasks, resolve_probes
from core_eval.probes.hf import DEFAULT_N, add_probe_arguments, custom_dataset, load_probe, probe_dataset, to_hf_dataset

__all__ = [
    "Box", "LazyImages", "ProbeArgumentError", "ProbeDataError", "ProbeSample", "Video", "probe_set_hash",
    "NUMBER_WORDS", "exact_match", "first_line", "normalize_answer", "probe_scores", "relaxed_match",
    "KEY_LETTERS", "KEY_WORDS", "PROBE_FAMILIES", "count_control", "family_knobs", "generate", "grid_needle",
    "multi_image_needle", "text_lookup", "doc_needle", "video_needle", "read_jsonl", "write_jsonl", "is_source",
    "read_source", "ProbeTask", "probe_tasks", "resolve_probes",
    "DEFAULT_N", "add_probe_arguments", "custom_dataset", "load_probe", "probe_dataset", "to_hf_dataset",
]
