"""Answer matching for probe tasks (usable as lm-eval per-sample metrics; return bools)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["normalize_answer", "exact_match", "relaxed_match", "first_line", "probe_scores", "NUMBER_WORDS"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty")
_WORD_VALUE = {w: i for i, w in enumerate(NUMBER_WORDS)}
_NUM = re.compile(r"^[+-]?\d+(\.\d+)?$")


def normalize_answer(s) -> str:
    """NFKC, casefold, punctuation -> space (keeps ``3.5``; ``1,000`` -> ``1000``), collapse spaces."""
    s = unicodedata.normalize("NFKC", "" if s is None else str(s)).casefold()
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)       # thousands separators
    s = re.sub(r"(?<=\d)\.(?=\d)", "\x00", s)       # protect decimal points
    s = re.sub(r"(?<![\w.])-(?=\d)", "\x01", s)     # protect a leading minus sign
    s = "".join(" " if (unicodedata.category(ch)[0] in "PS" or ch.isspace()) else ch for ch in s)
    return " ".join(s.replace("\x00", ".").replace("\x01", "-").split())


def _candidates(gold, aliases) -> list[str]:
    out = [normalize_answer(gold)] + [normalize_answer(a) for a in (aliases or ())]
    return [c for c in out if c]


def first_line(s) -> str:
    """The first non-empty line of a generation, stripped (what the probe tasks' exact match reads)."""
    for line in str(s).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def exact_match(pred, gold, aliases: Iterable[str] = ()) -> bool:
    """Normalised prediction equals the normalised gold answer or an alias."""
    return normalize_answer(pred) in _candidates(gold, aliases)


def _number(tok: str):
    if tok in _WORD_VALUE:
        return float(_WORD_VALUE[tok])
    return float(tok) if _NUM.match(tok) else None


def relaxed_match(pred, gold, aliases: Iterable[str] = ()) -> bool:
    """Gold/alias occurs as whole words in the prediction, or a numeric gold equals a number in it.

    Numbers compare by value (``3`` == ``3.0`` == ``three``, words zero..twenty).
    """
    p = normalize_answer(pred).split()
    if not p:
        return False
    pnums = {v for v in map(_number, p) if v is not None}
    for c in _candidates(gold, aliases):
        toks = c.split()
        m = len(toks)
        if any(p[i:i + m] == toks for i in range(len(p) - m + 1)):
            return True
        if m == 1 and (v := _number(toks[0])) is not None and v in pnums:
            return True
    return False


def probe_scores(pred, gold, aliases: Iterable[str] = ()) -> dict[str, float]:
    """The probe tasks' per-sample scores: ``exact_match`` on the first non-empty line of the
    generation, ``relaxed_match`` on all of it, both against the gold answer and its aliases."""
    return {"exact_match": float(exact_match(first_line(pred), gold, aliases)),
            "relaxed_match": float(relaxed_match(pred, gold, aliases))}
