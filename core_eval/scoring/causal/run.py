"""``run_causal``: the whole causal check of a head spec's RAM ranking as one Python function
(load the model, measure exact and / or attribution effects, compare with RAM, write the spec)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .agreement import Comparison, compare, spearman
from .effects import ExactEffects, attribution_effects, causal_subset, exact_effects, parse_subset, _ram_name
from .spec_arrays import ATTRIBUTION_LOGPROB, MEASURED, _json_float, add_causal_to_spec

METHODS = ("exact", "attribution", "both")


@dataclass
class CausalRun:
    """What :func:`run_causal` measured and wrote."""

    spec: object  # the new HeadSpec (written to ``path``)
    path: Path
    exact: ExactEffects | None = None
    attribution: np.ndarray | None = None
    comparisons: list[Comparison] = field(default_factory=list)


def _means(means, model, processor, out: Path, spec_path, progress: bool):
    from core_eval.means import compute_head_means, load_head_means, means_path_for, save_head_means
    from core_eval.probes import generate, probe_set_hash
    from core_eval.prompting import iter_batches

    if means is not None:
        return load_head_means(means), {"path": str(means)}
    for cand in (means_path_for(out), means_path_for(spec_path)):
        if cand.is_file():
            return load_head_means(cand), {"path": str(cand)}
    ref = generate("grid_needle", 16, seed=0)  # the same default reference set as core_eval.load
    values = compute_head_means(model, iter_batches(processor, ref, batch_size=4), progress=progress)
    record = {"probes": "grid_needle", "n": 16, "probe_hash": probe_set_hash(ref)}
    path = save_head_means(means_path_for(out), values, {k: str(v) for k, v in record.items()})
    return values, {**record, "path": str(path)}


def run_causal(model, spec, out, *, probes="grid_needle", n: int = 32, seed: int = 0, knobs: dict | None = None,
               image_root=None, family=None, mode: str = "zero", means=None, subset: str = "auto",
               method: str = "both", score: str | None = None, batch_size: int = 8, top: int = 10,
               dtype=None, device=None, progress: bool = True,
               echo: Callable[[str], None] | None = print) -> CausalRun:
    """Measure each head's effect on the gold answer and write it into a head spec.

    Args:
        model: checkpoint directory or cached model id.
        spec: path of the head spec with RAM scores.
        out: the spec to write (pass ``spec`` itself to update it in place: never implicit).
        probes / n / seed / knobs / image_root: the probe samples (as ``core-eval score``).
        mode: ``zero`` or ``mean`` ablation; ``means``: head-means file for ``mean`` (default:
            ``<out>.means.safetensors`` or ``<spec>.means...`` if present, else computed and saved).
        subset: heads for the exact method (``all``, ``auto``, ``topN+randomM``, ``topN``, ``randomM``).
        method: ``exact``, ``attribution`` or ``both``; ``score``: the RAM array (default ``ram``).
        top: rows per direction in the disagreement tables; ``echo``: where the report lines go
            (``None``: silent).
    Everything that can fail without weights (spec shape, score name, subset, probes) fails first.
    """
    from core_eval import __version__
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load, load_config
    from core_eval.probes import load_probe, probe_set_hash
    from core_eval.spec import load_head_spec

    say = echo or (lambda _line: None)
    if n < 1:
        raise ValueError("--n must be >= 1")
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {', '.join(METHODS)}")
    out = Path(out)
    knobs = dict(knobs or {})
    shape = shape_from_config(load_config(model), family)
    spec_obj = load_head_spec(spec, shape=shape)
    ram_name = _ram_name(spec_obj, score)
    ram = spec_obj.score(ram_name)
    sub = parse_subset(subset, shape.num_layers * shape.num_heads)
    samples = load_probe(probes, n=n, seed=seed, image_root=image_root, **knobs)[:n]
    loaded = load(model, heads="none", dtype=dtype, device=device, family=family)
    mdl, processor = loaded.model, loaded.processor
    common = {"probes": str(probes), "probe_hash": probe_set_hash(samples), "n_samples": len(samples),
              "seed": seed, "knobs": knobs, "mode": mode,
              "model": str(model), "dtype": str(mdl.dtype).replace("torch.", ""),
              "core_eval_version": __version__, "ram_score": ram_name}
    means_values = None
    if mode == "mean":
        means_values, mrec = _means(means, mdl, processor, out, spec, progress)
        common["means"] = mrec
    effects: dict[str, np.ndarray] = {}
    meta: dict = {}
    measured = None
    run = CausalRun(spec=None, path=out)
    if method in ("exact", "both"):
        heads = None if sub is None else causal_subset(spec_obj, *sub, seed=seed, score=ram_name)
        exact = exact_effects(mdl, processor, samples, heads, mode, means=means_values, batch_size=batch_size,
                              progress=progress)
        run.exact = exact
        effects.update(exact.arrays())
        measured = exact.measured
        c_lp = compare(ram, exact.logprob_drop, top, x_name=ram_name, y_name="logprob_drop")
        c_acc = compare(ram, exact.acc_drop, top, x_name=ram_name, y_name="acc_drop")
        run.comparisons.append(c_lp)
        meta["exact"] = {**common, "subset": "all" if sub is None else f"top{sub[0]}+random{sub[1]}",
                         "n_heads": len(exact.heads), "baseline_accuracy": float(exact.baseline_correct.mean()),
                         "baseline_logprob": float(exact.baseline_logprob.mean()),
                         "spearman_ram_logprob_drop": _json_float(c_lp.rho),
                         "spearman_ram_acc_drop": _json_float(c_acc.rho)}
        say(f"exact ({mode}, {len(exact.heads)} heads, {exact.n} samples): baseline accuracy "
            f"{exact.baseline_correct.mean():.3f}, mean gold log-prob {exact.baseline_logprob.mean():.3f}")
        say(f"Spearman({ram_name}, acc_drop) = {_fmt(c_acc.rho)} over {c_acc.n} heads")
    if method in ("attribution", "both"):
        attr = attribution_effects(mdl, processor, samples, mode, means_values, batch_size=batch_size,
                                   progress=progress)
        run.attribution = attr
        effects[ATTRIBUTION_LOGPROB] = attr
        c_at = compare(ram, attr, top, x_name=ram_name, y_name="attribution")
        run.comparisons.append(c_at)
        meta["attribution"] = {**common, "n_heads": int(attr.size),
                               "spearman_ram_attribution": _json_float(c_at.rho)}
        if run.exact is not None:
            rho = spearman(run.exact.logprob_drop, attr)
            meta["attribution"]["spearman_vs_exact"] = _json_float(rho)
            say(f"attribution vs exact log-prob drop: Spearman = {_fmt(rho)} over {len(run.exact.heads)} heads")
    for rep in run.comparisons:
        say("")
        say(rep.format())
    run.spec = add_causal_to_spec(spec_obj, effects, meta, measured=measured)
    run.path = run.spec.write(out)
    say(f"\nwrote {run.path}: {', '.join(sorted(effects))}" + (f" + {MEASURED}" if measured is not None else ""))
    return run


def _fmt(rho: float) -> str:
    return "n/a" if not math.isfinite(rho) else f"{rho:+.3f}"
