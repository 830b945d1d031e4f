"""Writers for other projects' head files, so a core-eval selection runs in their tools.

- :func:`write_duo_attention`: DuoAttention's ``full_attention_heads.tsv``, one row per layer, one
  tab-separated gate per *KV* head: ``1`` for a full-attention (retrieval) head, ``0`` for a
  streaming one. Query heads become KV heads through the spec's ``kv_policy`` (``any``: a KV head
  is full if any of its query heads is selected; ``all``: if all are), as for hybrid sparse
  attention. DuoAttention's loader treats gate >= 0.5 as full, so the file reproduces the set.
- :func:`write_retrieval_head`: Retrieval Head's ``{"L-H": [score]}`` JSON, every query head with
  its score (one value: the spec's mean score; the per-sample scores are not kept in a spec).
  Retrieval Head picks its heads by score, so the file carries the ranking, not the selection.

Both read back with :func:`core_eval.spec.load_head_spec` (tests check the round trip).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core_eval._io import atomic_write
from core_eval.spec.errors import HeadSpecError


def write_duo_attention(spec, path: str | os.PathLike) -> Path:
    """``full_attention_heads.tsv`` for ``spec``'s selection (needs the spec's ``num_kv_heads``)."""
    shape = spec.shape
    if shape.num_kv_heads is None:
        raise HeadSpecError("the spec does not record num_kv_heads, which DuoAttention's per-KV-head file needs",
                            "rescore or convert the spec with the model's shape", getattr(spec, "source", None))
    full = {tuple(h) for h in spec.kv_heads()}
    rows = ["\t".join("1" if (l, kv) in full else "0" for kv in range(shape.num_kv_heads))
            for l in range(shape.num_layers)]
    return atomic_write(path, "\n".join(rows) + "\n")


def write_retrieval_head(spec, path: str | os.PathLike, score: str | None = None) -> Path:
    """Retrieval Head JSON of ``spec``'s ``score`` array (default: the spec's ranking score)."""
    values = spec.score(score)
    obj = {f"{l}-{h}": [float(values[l][h])] for l in range(len(values)) for h in range(len(values[l]))}
    return atomic_write(path, json.dumps(obj, indent=1) + "\n")


WRITERS = {"duo": write_duo_attention, "retrieval-head": write_retrieval_head}
