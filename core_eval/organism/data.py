"""Probe samples for the organism: the prompt formats it is trained and evaluated on.

Every training and evaluation prompt goes through the processor's chat template exactly as in
real use (:func:`core_eval.prompting.prompt_text`): one ``{"type": "image"}`` entry per image,
then the text. Two phrasings of each visual question are used:

- ``plain``: the probe question alone (what ``core-eval score`` / ``causal`` send);
- ``lm_eval``: question + ``"\\n"`` + :data:`ANSWER_INSTRUCTION` (what the lm-eval probe tasks
  send; ``task_configs/utils.py`` ``doc_to_text`` with the ``<image>`` placeholders removed by
  ``hf-multimodal --apply_chat_template``).

The text-only family ``text_needle`` is built from ``text_lookup`` samples: the page as
``key: value`` lines in the prompt (no image), "What is the value of <key>?" -> the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core_eval.organism import ANSWER_INSTRUCTION, FAMILY_BASE, TASK_KNOBS
from core_eval.probes import generate, probe_scores

__all__ = ["Prompted", "FAMILIES", "CHANCE", "make_samples", "text_page", "is_correct"]

#: Families the organism is trained and evaluated on (text_needle is text-only; text_table is
#: ``text_lookup`` in its table layout, the lm-eval task ``core_text_lookup_table``).
FAMILIES = ("grid_needle", "count_control", "multi_image_needle", "text_table", "text_needle")

#: Chance exact match at the task knobs, and how it is computed.
CHANCE: dict[str, tuple[float, str]] = {
    "grid_needle": (0.20, "uniform guess among the 5 distinct (colour, shape) types in the grid; "
                          "1/16 for a random cell, 1/42 for a random type"),
    "count_control": (0.20, "uniform guess of the count in 1..5"),
    "multi_image_needle": (0.25, "uniform guess of the image number in 1..4"),
    "text_table": (1 / 9, "uniform guess of the digit 1..9"),
    "text_needle": (0.125, "uniform guess among the 8 values on the page"),
    "text_lookup": (0.125, "uniform guess among the 8 values on the page"),
}

TEXT_TITLE = "RECORD SHEET"


@dataclass
class Prompted:
    """A probe sample with the question text actually sent (duck-types ``ProbeSample``)."""

    id: str
    images: list
    question: str
    answer: str
    aliases: list = field(default_factory=list)
    family: str = ""
    meta: dict = field(default_factory=dict)
    boxes: list = field(default_factory=list)


def text_page(rows: list[dict]) -> str:
    """The text_lookup page as lines (title + ``key: value``), as task_configs/utils.py."""
    return "\n".join([TEXT_TITLE] + [f"{r['key']}: {r['value']}" for r in rows])


def make_samples(family: str, n: int, seed: int, *, style: str = "lm_eval",
                 knobs: dict | None = None) -> list[Prompted]:
    """``n`` prompted samples of ``family`` (``TASK_KNOBS`` unless ``knobs``), phrased in
    ``style`` ("plain" or "lm_eval"; text_needle has one phrasing)."""
    if style not in ("plain", "lm_eval"):
        raise ValueError(f"style must be 'plain' or 'lm_eval', got {style!r}")
    base = FAMILY_BASE.get(family, family)
    k = dict(TASK_KNOBS[family]) if knobs is None else dict(knobs)
    out = []
    for s in generate(base, n, seed=seed, **k):
        if family == "text_needle":
            q = f"{text_page(s.meta['rows'])}\n\n{s.question}"
            images: list = []
        else:
            q = s.question if style == "plain" else f"{s.question}\n{ANSWER_INSTRUCTION}"
            images = s.images
        out.append(Prompted(id=s.id, images=images, question=q, answer=s.answer,
                            aliases=list(s.aliases), family=family, meta=s.meta,
                            boxes=list(s.boxes)))
    return out


def is_correct(pred: str, sample) -> bool:
    """lm-eval's ``exact_match`` of the probe tasks: first non-empty line vs gold + aliases."""
    return bool(probe_scores(pred, sample.answer, sample.aliases)["exact_match"])
