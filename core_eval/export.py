"""``core-eval export``: an ablated checkpoint any engine can serve (vLLM, SGLang, TGI, lm-eval's
``vllm-vlm``, lmms-eval's vLLM model), at any scale.

Serving engines run tensor-parallel and cannot take a per-head attention patch (DESIGN §8), but
``zero`` ablation is exactly a weight edit: the head's slice of the ``o_proj`` *input* is 0, i.e.
the head's ``head_dim`` input columns of ``o_proj.weight`` are 0. ``mean`` ablation replaces the
slice by a constant ``m_h``, i.e. adds ``W[:, h] @ m_h`` to the output: exact only as a bias, so it
exports only where ``o_proj`` has one (else a refusal saying why). ``uniform``, ``visual_knockout``
and the sparse variants change the attention itself; no weight edit reproduces them.

The output is a normal checkpoint (the same config, processor and safetensors; every tensor but the
edited ``o_proj`` weights / biases byte-identical) plus ``core_eval_export.json``: source, heads,
mode, selection, spec path and hash, package version. Written into a temporary sibling folder and
renamed into place, so a killed export never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from core_eval.loading import LoadError, load_family_processor, plan

PROVENANCE_FILE = "core_eval_export.json"
EXPORTABLE = ("zero", "mean")


def export_ablated(pretrained: str | os.PathLike, out: str | os.PathLike, *, spec=None, heads=None,
                   ablation: str = "zero", frac: float | None = None, k: int | None = None, seed: int = 0,
                   threshold: float | None = None, means: str | os.PathLike | None = None, family: Any = None,
                   overwrite: bool = False) -> Path:
    """Write ``pretrained`` with the chosen heads ablated into the weights at ``out``.

    Arguments as :func:`core_eval.load`. Everything is validated before any weights load (an
    existing ``out`` without ``overwrite``, a mode no weight edit reproduces, ``mean`` on an
    ``o_proj`` without bias, a ``mean`` without a means file). Returns ``Path(out)``.
    """
    out = Path(out)
    if ablation not in EXPORTABLE:
        raise LoadError(
            f"ablation={ablation!r} cannot be exported: it changes the attention itself (uniform: the query; "
            "visual_knockout: the keys; sparse: the pattern), which no weight edit reproduces. Exportable: "
            f"{', '.join(EXPORTABLE)}; evaluate the others through core_hf / core-vlmeval."
        )
    if out.exists() and not overwrite:
        raise LoadError(f"--out {out} exists; pass --overwrite to replace it, or another folder")
    if Path(pretrained).resolve() == out.resolve():
        raise LoadError(f"--out {out} is the source checkpoint; write the export elsewhere")
    p = plan(pretrained, spec=spec, heads=heads, ablation=ablation, frac=frac, k=k, seed=seed,
             threshold=threshold, means=means, family=family)
    if not p.heads:
        raise LoadError("the head set is empty: an export would be a copy of the checkpoint; choose heads")
    if ablation == "mean" and p.variant.config.get("means") is None:
        raise LoadError("ablation=mean needs a means file (means=PATH, or <spec>.means.safetensors beside the spec: "
                        "core_eval.load(..., ablation='mean') computes one)")
    model, processor = _load_plain(pretrained, p)
    adapter = _adapter(model, p.family)
    _check_bias(adapter, p, ablation)
    with torch.no_grad():
        _edit(adapter, p, ablation)
    record = _provenance(pretrained, p, ablation)
    _save_atomically(model, processor, out, record, overwrite)
    return out


def _load_plain(pretrained, p):
    import transformers

    from core_eval.adapters import bind_family

    processor = load_family_processor(pretrained, p.family)
    auto = transformers.AutoModelForCausalLM if p.family.text_config is None else transformers.AutoModelForImageTextToText
    model = auto.from_pretrained(str(pretrained), dtype="auto").eval()  # the checkpoint's own dtype, unconverted
    bind_family(model, p.family)
    return model, processor


def _adapter(model, family):
    from core_eval.adapters import adapter_for

    return adapter_for(model, family)


def _check_bias(adapter, p, ablation):
    if ablation != "mean":
        return
    missing = sorted({l for l, _ in p.heads if adapter.o_proj(l).bias is None})
    if missing:
        raise LoadError(
            f"ablation=mean cannot be exported for {adapter.family.name}: o_proj has no bias (layers {missing}), and "
            "replacing a head's input by its mean adds a constant W[:, h] @ mean to the output, which only a bias "
            "can hold. Adding one would change the architecture; export ablation=zero, or evaluate mean ablation "
            "through core_hf / core-vlmeval."
        )


def _edit(adapter, p, ablation):
    """Zero the chosen heads' ``head_dim`` input columns of ``o_proj``; for ``mean``, first fold
    ``W[:, h] @ m_h`` into the bias."""
    from core_eval.intervene import head_index
    from core_eval.means import load_head_means

    D = adapter.shape.head_dim
    means = None
    if ablation == "mean":
        m = p.variant.config["means"]
        means = m if isinstance(m, torch.Tensor) else load_head_means(m)
    for layer, idx in head_index(p.heads).items():
        o = adapter.o_proj(layer)
        w = o.weight  # (hidden, H * D)
        for h in idx.tolist():
            cols = slice(h * D, (h + 1) * D)
            if means is not None:
                o.bias += (w[:, cols].double() @ means[layer, h].double()).to(o.bias.dtype)
            w[:, cols] = 0


def _provenance(pretrained, p, ablation) -> dict:
    from core_eval import __version__

    return {
        "schema": "core-eval-export/v1",
        "source": str(Path(pretrained).resolve()) if Path(pretrained).exists() else str(pretrained),
        "family": p.family.name,
        "mode": ablation,
        "edit": "o_proj input columns of each head zeroed" + (" (mean folded into o_proj.bias)" if ablation == "mean"
                                                               else ""),
        "heads": [list(h) for h in p.heads],
        "n_heads": len(p.heads),
        "selection": p.selection,
        "spec": None if p.spec is None else {"path": str(Path(p.spec_path).resolve()) if p.spec_path else None,
                                             "hash": p.spec.content_hash()},
        "means": p.means_record,
        "core_eval_version": __version__,
    }


def _save_atomically(model, processor, out: Path, record: dict, overwrite: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
