"""Question templates: a referring expression (plus the row's fields) -> question and gold answer.

A template is a preset name of :data:`TEMPLATES` or a ``str.format`` string; the answer is the
preset's answer, or the ``answer`` option (also a format string, e.g. ``"{colour}"``). Fields:

- ``ref``: the referring expression (RefCOCO: the first expression of the object; COCO without
  expressions: the category name);
- ``category``: the category name, where the data has one;
- ``box``: the target box as integer pixels ``[x0, y0, x1, y1]``; ``box_rel``: the box as
  fractions of the image width / height with two decimals, ``[0.12, 0.30, 0.55, 0.91]``
  (the RefCOCO REC convention);
- every scalar field of the row (string / number columns, COCO annotation keys).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from core_eval.probes.types import ProbeArgumentError

__all__ = ["Template", "TEMPLATES", "DEFAULT_TEMPLATE", "resolve_template", "box_fields"]


@dataclass(frozen=True)
class Template:
    """``question`` and ``answer`` format strings (``answer=None``: the user must supply one)."""

    name: str
    question: str
    answer: str | None
    description: str = ""

    def fields(self) -> set[str]:
        return _fields(self.question) | (_fields(self.answer) if self.answer else set())

    def render(self, values: dict) -> tuple[str, str]:
        return self.question.format_map(values), self.answer.format_map(values)


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("rec", "Give the bounding box of {ref} as [x0, y0, x1, y1], each coordinate a fraction of the image "
                    "width or height with two decimals.", "{box_rel}",
             "referring-expression comprehension: the answer is the object's box (RefCOCO REC)"),
    Template("category", "What kind of object is {ref}? Answer with one word.", "{category}",
             "the answer is the object's category name (needs a category)"),
    Template("colour", "What is the colour of {ref}? Answer with one word.", None,
             "the gold colour must come from the data: pass answer='{<column>}'"),
)}
DEFAULT_TEMPLATE = "rec"


def _fields(fmt: str) -> set[str]:
    try:
        return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(fmt) if f is not None}
    except ValueError as e:
        raise ProbeArgumentError(f"template {fmt!r} is not a valid format string ({e})") from None


def resolve_template(template: str | None, answer: str | None, available: set[str]) -> Template:
    """The template to use, checked against the ``available`` field names (before any row is read)."""
    name = template or DEFAULT_TEMPLATE
    if not isinstance(name, str) or (answer is not None and not isinstance(answer, str)):
        raise ProbeArgumentError("template and answer must be strings")
    if name in TEMPLATES:
        t = TEMPLATES[name]
        if answer is not None:
            t = Template(t.name, t.question, answer, t.description)
    elif "{" in name:
        if answer is None:
            raise ProbeArgumentError(f"a custom template ({name!r}) needs answer='...' (a format string over the "
                                     f"row's fields, e.g. '{{category}}'); fields: {', '.join(sorted(available))}")
        t = Template("custom", name, answer)
    else:
        raise ProbeArgumentError(f"unknown template {name!r}; presets: "
                                 + "; ".join(f"{k} ({v.description})" for k, v in TEMPLATES.items())
                                 + ", or a format string with {ref}")
    if t.answer is None:
        raise ProbeArgumentError(f"template {t.name!r} has no gold answer in this data: {t.description}; "
                                 f"fields: {', '.join(sorted(available))}")
    missing = sorted(t.fields() - available)
    if missing:
        raise ProbeArgumentError(f"template {t.name!r} uses field(s) {missing} that this data does not have; "
                                 f"available fields: {', '.join(sorted(available))}")
    return t


def box_fields(box: tuple[float, float, float, float], size: tuple[int, int]) -> dict[str, str]:
    """``box`` and ``box_rel`` strings for a half-open pixel box on an image of ``size``."""
    x0, y0, x1, y1 = box
    w, h = size
    px = [round(x0), round(y0), round(x1), round(y1)]
    rel = [x0 / w, y0 / h, x1 / w, y1 / h]
    return {"box": "[" + ", ".join(str(v) for v in px) + "]",
            "box_rel": "[" + ", ".join(f"{v:.2f}" for v in rel) + "]"}
