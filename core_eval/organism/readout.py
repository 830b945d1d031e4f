"""Read-out items: the images of a probe, then many (query, answer) pairs back to back.

A read-out item is the probe's chat prompt up to and including its last image, followed by
``k`` pairs written as bare tokens, with the loss on every answer::

    USER: <image>x16\\n  B 7  K 3  V 1 ...          (text table: key -> value)
    USER: <image>x16 ... x4  red circle 3 ...       (multi-image: object -> image number)
    USER: <image>x16\\n  2 3 red circle ...          (grid: row column -> object)
    USER: <image>x16\\n  red 3 ...                   (count: colour -> how many)

(spaces above are for reading: the query's tokens are followed directly by the answer's). This is
multi-query associative recall (MQAR) over visual memory: the query token stands right before its
answer, so a single attention hop from it to the matching visual token is rewarded on every pair,
instead of the two hops (fetch the question's key to the answer position, then match) that the
chat question needs and that no gradient reaches until both exist. With these items beside the
chat questions the text table went from chance (0.25 on 4-entry tables after 500 steps) to 1.00
held-out in 300 steps, and the transfer to the chat question was immediate (docs/organism_sweep.md).
Nothing routes retrieval through chosen heads: it is training data, like the dense
grounding / OCR read-outs of real MLLM pretraining.

Pool family names are ``"readout:<family>"`` (``train.py``'s ``pool`` / ``batch``).
"""

from __future__ import annotations

import random

PREFIX = "readout:"
#: families :func:`readout_pairs` writes pairs for
READOUT_FAMILIES = ("text_table", "multi_image_needle", "grid_needle", "count_control")


def base_family(name: str) -> str:
    """``"readout:text_table"`` -> ``"text_table"``; other names unchanged."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def readout_pairs(sample) -> list[tuple[str, str]]:
    """Every (query, answer) the images of ``sample`` determine (see the module docstring)."""
    fam, meta = base_family(sample.family), sample.meta
    if fam == "text_table":
        return [(r["key"], r["value"]) for r in meta["rows"]]
    if fam == "multi_image_needle":
        where: dict[str, list[int]] = {}
        for m, objs in enumerate(meta["objects"]):
            for o in objs:
                where.setdefault(o["type"], []).append(m)
        return [(t, str(ms[0] + 1)) for t, ms in sorted(where.items()) if len(ms) == 1]
    if fam == "grid_needle":
        g = meta["knobs"]["grid"]
        return [(f"{i // g + 1} {i % g + 1}", t) for i, t in enumerate(meta["cells"])]
    if fam == "count_control":
        counts: dict[str, int] = {}
        for o in meta["objects"]:
            c = o["type"].split(" ")[0]
            counts[c] = counts.get(c, 0) + 1
        return [(c, str(n)) for c, n in sorted(counts.items())]
    raise ValueError(f"no read-out pairs for family {fam!r}; known: {', '.join(READOUT_FAMILIES)}")


def encode_readout(processor, sample, feats: list[int], rng: random.Random, k: int):
    """An :class:`~core_eval.organism.train.Item`: the prompt's tokens up to its last image (the
    placeholders expanded as the processor does), then ``k`` pairs drawn with replacement from
    :func:`readout_pairs`, each the query's tokens followed by the answer's (one span per answer)."""
    from core_eval.organism.train import N_VIS, Item
    from core_eval.prompting import prompt_text

    tok = processor.tokenizer
    text = prompt_text(processor, sample).replace("<image>", "<image>" * N_VIS)
    ids = tok(text[:text.rindex("<image>") + len("<image>\n")])["input_ids"]
    pairs = readout_pairs(sample)
    if not pairs:
        raise ValueError(f"{sample.id}: no read-out pairs (nothing occurs once)")

    def piece(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    spans = []
    for _ in range(k):
        q, a = pairs[rng.randrange(len(pairs))]
        ids = ids + piece(q)
        start = len(ids)
        ids = ids + piece(a)
        spans.append((start, len(ids)))
    return Item(ids=ids, feats=feats, family=sample.family, spans=spans)
