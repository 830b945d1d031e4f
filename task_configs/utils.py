"""Helpers for the core_eval probe tasks (lm-eval 0.4.13 ``!function utils.<name>`` targets).

lm-eval loads this file by path (it sits next to the YAMLs), so it must not rely on being
importable as a package module. Everything heavy lives in :mod:`core_eval.probes`.

Dataset hook
    ``custom_dataset`` is called as ``fn(**metadata, **dataset_kwargs)`` where ``metadata`` is
    the task's YAML ``metadata`` merged with *all model args* and ``--metadata``. Duplicate keys
    between the two raise ``TypeError`` inside lm-eval, so the YAML's ``dataset_kwargs`` use
    ``probe_*`` names (``probe_family``, ``probe_n``, ``probe_seed``, ``probe_knobs``) and the
    run-time overrides read from ``--metadata`` use ``core_probe_*`` names:

    - ``core_probe_n``: number of samples (default from YAML, 100)
    - ``core_probe_seed``: generator seed
    - ``core_probe_knobs``: dict of knob overrides. Keys that are family names hold a dict for
      that family only (``{"grid_needle": {"grid": 6}}``); other keys apply to every family that
      has that knob (``{"image_size": 672}``); a knob no family knows is an error.

    e.g. ``lm_eval ... --metadata '{"core_probe_n": 20, "core_probe_knobs": {"grid": 6}}'``.

    The data-source tasks (``source_dataset``: RefCOCO, ``core_grounding``) read ``probe_source``
    / ``probe_options`` from the YAML and, at run time, ``core_probe_source`` (any ``--probes``
    data source: ``hf:<path-or-id>[:split]``, ``coco:<instances.json>``, a JSONL path),
    ``core_probe_options`` (reader options, plus ``image_root``), ``core_probe_n`` and
    ``core_probe_seed`` (with the ``shuffle`` option).
"""

from __future__ import annotations

import json
import re
from typing import Any

from core_eval.probes import (
    PROBE_FAMILIES, family_knobs, first_line, load_probe, probe_scores, to_hf_dataset,
)

#: Appended after every visual probe question (the LLaVA short-answer convention).
ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
IMAGE_PLACEHOLDER = "<image>"  # lm-eval's DEFAULT_IMAGE_PLACEHOLDER
TEXT_PAGE_TITLE = "RECORD SHEET"
#: Run-time overrides read from ``--metadata`` (see the module docstring).
OVERRIDE_KEYS = ("core_probe_n", "core_probe_seed", "core_probe_knobs")
#: Run-time overrides of the data-source tasks.
SOURCE_OVERRIDE_KEYS = ("core_probe_source", "core_probe_options", "core_probe_n", "core_probe_seed")


# ----------------------------------------------------------------------------- dataset hooks

def _as_dict(v, name):
    if v is None:
        return {}
    if isinstance(v, str):
        v = json.loads(v)
    if not isinstance(v, dict):
        raise TypeError(f"{name} must be a dict (or a JSON object string), got {v!r}")
    return dict(v)


def _knob_overrides(family: str, raw) -> dict:
    raw = _as_dict(raw, "core_probe_knobs")
    known = {k for f in PROBE_FAMILIES for k in family_knobs(f)}
    out: dict = {}
    for key, val in raw.items():
        if key in PROBE_FAMILIES:
            continue
        if key not in known:
            raise ValueError(f"core_probe_knobs: {key!r} is neither a probe family nor a knob of "
                             f"any family; knobs: {sorted(known)}")
        if key in family_knobs(family):
            out[key] = val
    out.update(_as_dict(raw.get(family), f"core_probe_knobs[{family!r}]"))  # family-specific wins
    return out


def resolve_probe_args(probe_family: str | None = None, probe_n: int | None = 100,
                       probe_seed: int = 0, probe_knobs: dict | None = None,
                       **metadata: Any) -> dict:
    """``{"family", "n", "seed", "knobs"}`` from the YAML's ``dataset_kwargs`` and run-time
    ``core_probe_*`` overrides in ``metadata`` (other metadata / model args are ignored)."""
    if probe_family not in PROBE_FAMILIES:
        raise ValueError(f"dataset_kwargs.probe_family must be one of {sorted(PROBE_FAMILIES)}, "
                         f"got {probe_family!r}")
    n = metadata.get("core_probe_n", probe_n)
    seed = metadata.get("core_probe_seed", probe_seed)
    n = None if n is None else int(n)
    knobs = {**_as_dict(probe_knobs, "probe_knobs"),
             **_knob_overrides(probe_family, metadata.get("core_probe_knobs"))}
    return {"family": probe_family, "n": n, "seed": int(seed), "knobs": knobs}


def _samples(**kwargs):
    a = resolve_probe_args(**kwargs)
    return load_probe(a["family"], n=a["n"], seed=a["seed"], **a["knobs"])


def probe_dataset(probe_split: str = "test", **kwargs: Any):
    """lm-eval ``custom_dataset`` for the visual probe tasks: ``DatasetDict({split: ds})`` with
    columns id, question, answer, aliases, images, image, boxes (JSON), family, meta (JSON),
    n_images (see :func:`core_eval.probes.to_hf_dataset`)."""
    import datasets

    return datasets.DatasetDict({probe_split: to_hf_dataset(_samples(**kwargs))})


def resolve_source_args(probe_source: str | None = None, probe_score_source: str | None = None,
                        probe_n: int | None = None, probe_seed: int = 0, probe_options: dict | None = None,
                        **metadata: Any) -> dict:
    """``{"source", "n", "seed", "image_root", "options"}`` of a data-source task: the YAML's
    ``dataset_kwargs`` with the run-time ``core_probe_*`` overrides (``probe_score_source`` is what
    ``core-eval score --probes <task>`` reads; the evaluation does not use it)."""
    source = metadata.get("core_probe_source") or probe_source
    if not source:
        raise ValueError("this task reads its data from --metadata core_probe_source, e.g. --metadata "
                         "'{\"core_probe_source\": \"hf:/data/refcocog:val\"}' (hf:<path-or-id>[:split], "
                         "coco:<instances.json> with core_probe_options.image_root, or a JSONL path)")
    options = {**_as_dict(probe_options, "probe_options"),
               **_as_dict(metadata.get("core_probe_options"), "core_probe_options")}
    n = metadata.get("core_probe_n", probe_n)
    return {"source": source, "n": None if n is None else int(n),
            "seed": int(metadata.get("core_probe_seed", probe_seed)),
            "image_root": options.pop("image_root", None), "options": options}


def source_dataset(probe_split: str = "test", **kwargs: Any):
    """lm-eval ``custom_dataset`` for the data-source tasks: ``DatasetDict({split: ds})`` with the
    columns of :func:`probe_dataset`, from the task's (or ``core_probe_source``'s) data."""
    import datasets

    a = resolve_source_args(**kwargs)
    samples = load_probe(a["source"], n=a["n"], seed=a["seed"], image_root=a["image_root"], **a["options"])
    return datasets.DatasetDict({probe_split: to_hf_dataset(samples)})


def text_page(rows: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The text_lookup page as plain text (title + ``key: value`` lines) and, per row, the
    ``[start, end)`` character span of its value in that text."""
    lines, spans, pos = [TEXT_PAGE_TITLE], [], len(TEXT_PAGE_TITLE) + 1
    for r in rows:
        line = f"{r['key']}: {r['value']}"
        start = pos + len(r["key"]) + 2
        spans.append((start, start + len(r["value"])))
        lines.append(line)
        pos += len(line) + 1
    return "\n".join(lines), spans


def text_needle_dataset(probe_split: str = "test", **kwargs: Any):
    """lm-eval ``custom_dataset`` for the text-only needle tasks, built from ``text_lookup``.

    Columns: id, question, answer, aliases, boxes (JSON), family, meta (JSON) as for the visual
    tasks, but no images (text models get none, and lm-eval's ``doc_hash`` hashes the repr of
    image objects, memory address included, so docs without images keep a stable hash);
    ``boxes`` locate the answer on the page image of the same probe id, which
    ``core_eval.probes.generate("text_lookup", ...)`` re-renders. Added: ``context`` (the page as
    ``key: value`` lines), ``choices`` (the page's values, in page order), ``label`` (index of
    the answer in ``choices``) and ``text_span`` (``[start, end)`` of the answer in ``context``:
    the text analogue of the boxes).
    """
    import datasets
    from datasets import Features, Value

    kwargs.setdefault("probe_family", "text_lookup")
    if kwargs["probe_family"] != "text_lookup":
        raise ValueError("the text needle tasks are built from probe_family 'text_lookup'")
    seq = getattr(datasets, "List", None) or datasets.Sequence
    features = Features({
        "id": Value("string"), "question": Value("string"), "answer": Value("string"),
        "aliases": seq(Value("string")), "boxes": Value("string"), "family": Value("string"),
        "meta": Value("string"), "context": Value("string"), "choices": seq(Value("string")),
        "label": Value("int32"), "text_span": seq(Value("int32")),
    })
    cols: dict[str, list] = {k: [] for k in features}
    for s in _samples(**kwargs):
        rows, t = s.meta["rows"], s.meta["row"]
        context, spans = text_page(rows)
        if context[spans[t][0]:spans[t][1]] != s.answer:  # pragma: no cover (layout changed)
            raise AssertionError(f"{s.id}: text span does not hold the answer")
        cols["id"].append(s.id)
        cols["question"].append(s.question)
        cols["answer"].append(s.answer)
        cols["aliases"].append(list(s.aliases))
        cols["boxes"].append(json.dumps([b.to_dict() for b in s.boxes]))
        cols["family"].append(s.family)
        cols["meta"].append(json.dumps(s.meta, sort_keys=True))
        cols["context"].append(context)
        cols["choices"].append([r["value"] for r in rows])
        cols["label"].append(t)
        cols["text_span"].append(list(spans[t]))
    return datasets.DatasetDict({probe_split: datasets.Dataset.from_dict(cols, features=features)})


# ----------------------------------------------------------------------------- prompts

def doc_to_text(doc: dict) -> str:
    """``<image>`` once per image, then the question and :data:`ANSWER_INSTRUCTION`.

    All placeholders come first and carry no labels: lm-eval turns each ``<image>`` into the
    model's image token (plain prompts) or into an image entry of the chat message
    (``--apply_chat_template``), and some chat templates (LLaVA's) move every image to the front
    and join the text parts, which would detach per-image labels such as ``Image 1:``. The probe
    questions already say "numbered 1 to n in the order shown". No newline after the
    placeholders: chat templates add their own separator (LLaVA writes ``<image>\\n``).
    """
    return f"{IMAGE_PLACEHOLDER * int(doc['n_images'])}{doc['question']}\n{ANSWER_INSTRUCTION}"


def doc_to_text_plain(doc: dict) -> str:
    """``<image>`` once per image, then the question alone (the REC questions state their answer
    format; the short-answer instruction would contradict it)."""
    return f"{IMAGE_PLACEHOLDER * int(doc['n_images'])}{doc['question']}"


def doc_to_images(doc: dict) -> list:
    """All images of a doc, flat and in order (for multi-image tasks)."""
    return list(doc["images"])


# ----------------------------------------------------------------------------- metrics

_NUMBER = re.compile(r"[-+]?\d*\.?\d+")


def box_iou(a, b) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 for an empty union)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def rec_results(doc: dict, results: list) -> dict:
    """:func:`process_results` plus, for the ``rec`` template, ``iou`` between the first four numbers
    of the generation (a relative ``[x0, y0, x1, y1]`` box) and the gold box, and ``acc_iou50``
    (IoU >= 0.5, the RefCOCO accuracy); an unreadable box scores 0."""
    out = process_results(doc, results)
    gold = [float(v) for v in _NUMBER.findall(doc["answer"])]
    pred = [float(v) for v in _NUMBER.findall(first_line(results[0] if results else ""))][:4]
    iou = box_iou(pred, gold) if len(pred) == 4 and len(gold) == 4 and pred[2] > pred[0] and pred[3] > pred[1] else 0.0
    return {**out, "iou": iou, "acc_iou50": float(iou >= 0.5)}


def process_results(doc: dict, results: list) -> dict:
    """``exact_match`` on the first non-empty line of the generation, ``relaxed_match`` on all
    of it, both against the gold answer and its aliases (core_eval.probes metrics)."""
    return probe_scores(results[0] if results else "", doc["answer"], list(doc.get("aliases") or []))
