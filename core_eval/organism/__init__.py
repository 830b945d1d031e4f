"""The bundled model organism: a small LLaVA trained here on the probe families.

No real MLLM weights reach the machines this project is built on, and random models prove
plumbing, not science. ``organism_dir()`` is a small LLaVA (CLIP vision tower + Llama language
model, ``LlavaForConditionalGeneration``) trained from scratch by
:mod:`core_eval.organism.train` on generated probes; it loads with
``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` like any
checkpoint and works with ``lm_eval --model hf-multimodal`` and ``core-eval``.

Rebuild: ``python -m core_eval.organism.train --out DIR`` (deterministic for a given torch
version and thread count; see ``training_log.json`` next to the weights for what it scored).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DESCRIPTION", "organism_dir", "training_log", "TASK_KNOBS", "FAMILY_BASE",
           "ANSWER_INSTRUCTION"]

DESCRIPTION = (
    "core-eval organism v2: LLaVA (CLIP ViT 64x64 px, patch 16 = one visual token per cell of the "
    "4x4 grid_needle grid at 448 px; Llama LM 6 layers x 8 heads, hidden 128) trained from "
    "scratch in two stages (vision tower on per-patch colour/shape/key/value classification, then "
    "projector + LM on task mixtures in phases that end on held-out accuracy: grid_needle first, "
    "then the text table with read-out items, then multi-image on growing scenes with labelled "
    "images, then all families). Solves core_grid_needle and core_text_lookup_table; counting and "
    "multi_image_needle are above chance; see training_log.json."
)

#: Knobs of the lm-eval probe tasks (task_configs/*.yaml, seed 1000) the organism was built for,
#: by organism family (see ``FAMILY_BASE``).
TASK_KNOBS: dict[str, dict] = {
    "grid_needle": {"grid": 4, "image_size": 448, "n_distractor_types": 4, "confusable": False},
    "count_control": {"min_count": 1, "max_count": 5, "n_distractors": 4, "count_by": "colour",
                      "image_size": 448},
    "multi_image_needle": {"n_images": 4, "objects_per_image": 4, "image_size": 336,
                           "n_distractor_types": 6, "confusable": False, "variant": "which_image"},
    "text_lookup": {"n_rows": 8, "image_size": 448, "value_kind": "code", "value_len": 4,
                    "font_scale": 2},
    # core_text_needle: the same pages as text (no image)
    "text_needle": {"n_rows": 8, "image_size": 448, "value_kind": "code", "value_len": 4,
                    "font_scale": 2},
    # core_text_lookup_table: the text family at a size the organism's 64 px input can read
    # (a 4x4 table of "B7" cells, one cell per visual token)
    "text_table": {"layout": "table", "n_rows": 16, "image_size": 448, "value_kind": "number",
                   "value_len": 1},
}

#: Organism family -> the probe family that generates it (the others are their own).
FAMILY_BASE: dict[str, str] = {"text_table": "text_lookup", "text_needle": "text_lookup"}

#: lm-eval's suffix of every visual probe prompt (task_configs/utils.py ANSWER_INSTRUCTION).
ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."


def organism_dir() -> Path:
    """Directory of the shipped checkpoint (``from_pretrained``-loadable)."""
    d = Path(__file__).resolve().parent / "weights"
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"the organism checkpoint is missing at {d}; rebuild it with "
                                "`python -m core_eval.organism.train --out " + str(d) + "`")
    return d


def training_log() -> dict:
    """The ``training_log.json`` written next to the shipped weights."""
    import json

    return json.loads((organism_dir() / "training_log.json").read_text())
