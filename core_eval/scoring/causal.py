"""Causal check of a RAM ranking: what each head does to the gold answer when it is ablated.

Attention mass is correlational. This module measures, per LM head ``(layer, head)``, the drop in
the teacher-forced log-probability of the gold answer (and in greedy accuracy) when that head
*alone* is ablated, in two ways:

* **exact** (:func:`exact_effects`): one forward pass per head per batch, with the product's own
  ablation (:func:`core_eval.intervene.apply_intervention`, ``zero`` or ``mean``) installed for
  that head only, against one clean pass. Cost: ``(n_heads + 1)`` passes per batch, so run it on
  small models or on a subset (:func:`causal_subset`: the top-N by RAM plus a seeded random
  sample of the rest).
* **attribution patching** (:func:`attribution_effects`): all heads from one forward + backward
  pass per batch. With ``z`` a head's slice of the ``o_proj`` input ``(B, T, H, D)`` and ``g`` the
  gradient of the summed gold log-probability with respect to it, the first-order estimate of the
  log-prob *drop* is ``-(g . (z_ablated - z))`` summed over positions and ``D``, where
  ``z_ablated`` is ``0`` (``zero``) or the head's mean output (``mean``). The gradient is captured
  by an ``o_proj`` forward pre-hook that adds a zero leaf tensor to the input (the model is not
  edited; parameters are frozen for the pass and restored afterwards).

Sign convention everywhere: **positive = ablating the head hurts the gold answer**
(``logprob_drop = logprob(clean) - logprob(ablated)``, ``acc_drop = acc(clean) - acc(ablated)``),
averaged over samples.

:func:`compare` reports the Spearman rank correlation between RAM and an effect and the heads where
the two rankings disagree most; :func:`add_causal_to_spec` writes the effects into a head spec.

Spec representation of a partial (subset) measurement: head-spec scores must be finite, so heads
that were not measured are stored as ``0.0`` and a 0/1 array ``causal_measured`` (1 = measured)
says which entries are real. ``spec.extra["causal"]["measured_mask"]`` names the mask and the
arrays it applies to; :func:`causal_scores` reads an array back with ``NaN`` at unmeasured heads.
Attribution arrays are always dense (every head is estimated) and need no mask.

Array names: ``causal_logprob_drop``, ``causal_logprob_drop_std`` (std over samples),
``causal_acc_drop``, ``causal_measured`` (exact); ``attribution_logprob_drop`` (attribution).
The ablation mode, probes, probe hash and sample count go to ``spec.extra["causal"]["exact"]`` and
``["attribution"]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

MODES = ("zero", "mean")
METHODS = ("exact", "attribution", "both")

EXACT_LOGPROB = "causal_logprob_drop"
EXACT_LOGPROB_STD = "causal_logprob_drop_std"
EXACT_ACC = "causal_acc_drop"
MEASURED = "causal_measured"
ATTRIBUTION_LOGPROB = "attribution_logprob_drop"
UNMEASURED_FILL = 0.0

__all__ = [
    "ATTRIBUTION_LOGPROB", "EXACT_ACC", "EXACT_LOGPROB", "EXACT_LOGPROB_STD", "MEASURED", "METHODS", "MODES",
    "Comparison", "ExactEffects", "add_causal_parser", "add_causal_to_spec", "answer_scores",
    "attribution_effects", "causal_scores", "causal_subset", "compare", "exact_effects", "gold_logprob",
    "greedy_correct", "parse_subset", "run_causal", "spearman",
]


# ---------------------------------------------------------------------------- gold-answer scores


def _to_device(inputs, model) -> dict:
    """Move tensors to the model's device; floating tensors (pixel values) to its dtype."""
    dtype = getattr(model, "dtype", None)
    out = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(model.device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def _answer_logits(model, inputs: dict, answer_mask: torch.Tensor):
    """Forward pass keeping only the logits of the rows that predict answer tokens (and after).

    Returns ``(logits (B, K-1, V), targets (B, K-1), mask (B, K-1))``: row ``i`` predicts
    ``targets[:, i]``, which is an answer token where ``mask`` is True.
    """
    ids = inputs["input_ids"]
    T = ids.shape[1]
    has = answer_mask.any(1)
    if not bool(has.all()):
        raise ValueError("every row needs at least one answer token (answer_mask is empty for some row)")
    first = int(answer_mask.float().argmax(1).min())
    if first < 1:
        raise ValueError("an answer token at position 0 has no row predicting it")
    K = T - first + 1  # rows first-1 .. T-1
    try:
        logits = model(**inputs, logits_to_keep=K).logits
    except TypeError:  # a model class without logits_to_keep
        logits = model(**inputs).logits
    logits = logits[:, -K:]
    targets = ids[:, T - K + 1:]
    mask = answer_mask[:, T - K + 1:].to(targets.device)
    return logits[:, :-1], targets, mask


def _scores_from_logits(logits, targets, mask):
    """(sum of answer-token log-probs (B,), every answer row's argmax is the gold token (B,))."""
    work = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits.to(work), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    total = (logp * mask.to(logp.dtype)).sum(1)
    hit = (logits.argmax(-1) == targets) | ~mask
    return total, hit.all(1)


def answer_scores(model, inputs, answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gold log-prob ``(B,)`` float64 and greedy correctness ``(B,)`` bool from one teacher-forced pass.

    ``inputs``/``answer_mask`` as from :func:`core_eval.prompting.encode_teacher_forced`.
    """
    with torch.no_grad():
        logits, targets, mask = _answer_logits(model, _to_device(inputs, model), answer_mask)
        total, correct = _scores_from_logits(logits, targets, mask)
    return total.double().cpu(), correct.cpu()


def gold_logprob(model, inputs, answer_mask: torch.Tensor) -> torch.Tensor:
    """Sum over the answer tokens of ``log p(gold token | prefix)`` (teacher forced), ``(B,)`` float64."""
    return answer_scores(model, inputs, answer_mask)[0]


def greedy_correct(model, inputs, answer_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the argmax at every answer row equals the gold token, i.e. greedy decoding from
    the prompt would produce the gold answer's tokens."""
    return answer_scores(model, inputs, answer_mask)[1]


# ---------------------------------------------------------------------------- helpers


def _encode_batches(processor, samples: Sequence, batch_size: int) -> list[tuple[dict, torch.Tensor]]:
    from core_eval.prompting import encode_teacher_forced

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not samples:
        raise ValueError("no samples given")
    out = []
    for i in range(0, len(samples), batch_size):
        inputs, amask, _ = encode_teacher_forced(processor, list(samples[i:i + batch_size]))
        out.append((dict(inputs), amask))
    return out


def _resolve_means(mode: str, means, shape) -> torch.Tensor | None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {', '.join(MODES)}")
    if mode == "zero":
        if means is not None:
            raise ValueError("means are only used by mode='mean'")
        return None
    if means is None:
        raise ValueError("mode='mean' needs head means (an (L, H, D) tensor or a .means.safetensors path; "
                         "see core_eval.means.compute_head_means)")
    if not isinstance(means, torch.Tensor):
        from core_eval.means import load_head_means

        means = load_head_means(means)
    want = (shape.num_layers, shape.num_heads, shape.head_dim)
    if tuple(means.shape) != want:
        raise ValueError(f"head means have shape {tuple(means.shape)} but the model needs {want} "
                         "(layers, heads, head_dim)")
    return means


@contextlib.contextmanager
def _frozen_params(model):
    """Parameters do not require grad inside (less memory for the backward); flags restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pass", disable=not progress)


# ---------------------------------------------------------------------------- exact effects


@dataclass
class ExactEffects:
    """Per-head effects of single-head ablation (exact: one pass per head per batch).

    Arrays are ``[L, H]`` with ``NaN`` at heads that were not measured. Positive = ablation hurts.
    """

    mode: str
    heads: list[tuple[int, int]]
    logprob_drop: np.ndarray
    logprob_drop_std: np.ndarray
    acc_drop: np.ndarray
    baseline_logprob: np.ndarray  # (N,)
    baseline_correct: np.ndarray  # (N,) bool
    ablated_logprob: np.ndarray  # (N, n_heads), columns in the order of ``heads``
    ablated_correct: np.ndarray  # (N, n_heads) bool

    @property
    def n(self) -> int:
        return int(self.baseline_logprob.shape[0])

    @property
    def measured(self) -> np.ndarray:
        return np.isfinite(self.logprob_drop)

    def arrays(self) -> dict[str, np.ndarray]:
        """Spec arrays (``NaN`` = not measured; :func:`add_causal_to_spec` fills and masks them)."""
        return {EXACT_LOGPROB: self.logprob_drop, EXACT_LOGPROB_STD: self.logprob_drop_std,
                EXACT_ACC: self.acc_drop}

    def to_frame(self):
        """One row per measured head: layer, head, logprob_drop, logprob_drop_std, acc_drop."""
        import pandas as pd

        rows = [{"layer": l, "head": h, "logprob_drop": self.logprob_drop[l, h],
                 "logprob_drop_std": self.logprob_drop_std[l, h], "acc_drop": self.acc_drop[l, h]}
                for l, h in self.heads]
        return pd.DataFrame(rows, columns=["layer", "head", "logprob_drop", "logprob_drop_std", "acc_drop"])


def exact_effects(model, processor, samples: Sequence, heads: Iterable | None = None, mode: str = "zero", *,
                  means=None, batch_size: int = 8, progress: bool = True) -> ExactEffects:
    """Ablate each head alone (``mode`` ``zero`` or ``mean``) and measure the gold answer.

    Args:
        heads: ``[(layer, head), ...]`` to measure; ``None`` = every LM head.
        means: ``(L, H, D)`` tensor or ``.means.safetensors`` path, for ``mode="mean"``.
    One clean pass plus one pass per head, per batch of ``batch_size`` samples.
    """
    from core_eval.adapters import adapter_for
    from core_eval.intervene import apply_intervention, check_heads

    adapter = adapter_for(model)
    s = adapter.shape
    means = _resolve_means(mode, means, s)
    if heads is None:
        heads = [(l, h) for l in range(s.num_layers) for h in range(s.num_heads)]
    heads = check_heads(heads, s)
    if not heads:
        raise ValueError("no heads to measure")
    options = {"means": means} if mode == "mean" else {}
    batches = _encode_batches(processor, samples, batch_size)
    base_lp, base_ok, abl_lp, abl_ok = [], [], [], []
    bar = _bar(len(batches) * (len(heads) + 1), f"exact ablation ({mode})", progress)
    try:
        for inputs, amask in batches:
            inputs = _to_device(inputs, model)  # once per batch, not once per head
            lp, ok = answer_scores(model, inputs, amask)
            base_lp.append(lp)
            base_ok.append(ok)
            bar.update(1)
            cols_lp, cols_ok = [], []
            for head in heads:
                iv = apply_intervention(model, [head], mode, **options)
                try:
                    lp, ok = answer_scores(model, inputs, amask)
                finally:
                    iv.remove()
                cols_lp.append(lp)
                cols_ok.append(ok)
                bar.update(1)
            abl_lp.append(torch.stack(cols_lp, 1))
            abl_ok.append(torch.stack(cols_ok, 1))
    finally:
        bar.close()
    base_lp_t = torch.cat(base_lp).numpy()
    base_ok_t = torch.cat(base_ok).numpy().astype(bool)
    abl_lp_t = torch.cat(abl_lp).numpy()
    abl_ok_t = torch.cat(abl_ok).numpy().astype(bool)
    drop = base_lp_t[:, None] - abl_lp_t  # (N, n_heads)
    acc = base_ok_t[:, None].astype(float) - abl_ok_t.astype(float)
    shape = (s.num_layers, s.num_heads)
    lp_arr, std_arr, acc_arr = (np.full(shape, np.nan) for _ in range(3))
    for j, (l, h) in enumerate(heads):
        lp_arr[l, h] = drop[:, j].mean()
        std_arr[l, h] = drop[:, j].std()
        acc_arr[l, h] = acc[:, j].mean()
    return ExactEffects(mode, heads, lp_arr, std_arr, acc_arr, base_lp_t, base_ok_t, abl_lp_t, abl_ok_t)


# ---------------------------------------------------------------------------- attribution patching


def _attribution_batch(model, adapter, inputs: dict, answer_mask: torch.Tensor, means) -> torch.Tensor:
    """Per-sample first-order log-prob drops ``(B, L, H)`` float64 for one batch."""
    s = adapter.shape
    L, H, D = s.num_layers, s.num_heads, s.head_dim
    deltas: dict[int, torch.Tensor] = {}
    clean: dict[int, torch.Tensor] = {}

    def make_hook(layer):
        def hook(module, args):
            x = args[0]
            d = torch.zeros_like(x, requires_grad=True)
            deltas[layer] = d
            clean[layer] = x.detach()
            return (x + d,) + tuple(args[1:])

        return hook

    handles = [adapter.o_proj(l).register_forward_pre_hook(make_hook(l)) for l in range(L)]
    try:
        with torch.enable_grad(), _frozen_params(model):
            logits, targets, mask = _answer_logits(model, _to_device(inputs, model), answer_mask)
            logp, _ = _scores_from_logits(logits, targets, mask)
            missing = [l for l in range(L) if l not in deltas]
            if missing:
                raise RuntimeError(f"o_proj of layer(s) {missing} did not run in the forward pass")
            grads = torch.autograd.grad(logp.sum(), [deltas[l] for l in range(L)], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    B = logp.shape[0]
    out = torch.zeros(B, L, H, dtype=torch.float64)
    for l, g in enumerate(grads):
        if g is None:  # this layer's output cannot reach the answer logits
            continue
        z = clean[l].reshape(*clean[l].shape[:-1], H, D).double()
        g = g.reshape(z.shape).double()
        if means is None:
            diff = -z
        else:
            diff = means[l].to(device=z.device, dtype=torch.float64)[None, None] - z
        out[:, l] = (-(g * diff)).sum(dim=(1, 3)).cpu()
    return out


def attribution_effects(model, processor, samples: Sequence, mode: str = "zero", means=None, *,
                        batch_size: int = 8, progress: bool = True, per_sample: bool = False) -> np.ndarray:
    """Attribution-patching estimate of every head's log-prob drop under ``mode`` ablation, ``[L, H]``.

    One forward + backward pass per batch; ``-(grad . (ablated - clean))`` summed over positions and
    ``head_dim``, mean over samples. ``per_sample=True`` returns ``(N, L, H)`` instead.
    """
    from core_eval.adapters import adapter_for

    adapter = adapter_for(model)
    means = _resolve_means(mode, means, adapter.shape)
    batches = _encode_batches(processor, samples, batch_size)
    parts = []
    bar = _bar(len(batches), f"attribution patching ({mode})", progress)
    try:
        for inputs, amask in batches:
            parts.append(_attribution_batch(model, adapter, inputs, amask, means))
            bar.update(1)
    finally:
        bar.close()
    eff = torch.cat(parts).numpy()
    return eff if per_sample else eff.mean(0)


# ---------------------------------------------------------------------------- subsets


def causal_subset(spec, top: int = 50, random: int = 50, seed: int = 0, score: str | None = None
                  ) -> list[tuple[int, int]]:
    """The ``top`` heads by ``score`` (default ``ram``, else the selection's score) plus ``random``
    heads drawn (seeded, platform-independent) from the rest. Sorted; clipped to the head count."""
    from core_eval.spec.selection import _rank, _seeded_order

    arr = spec.score(_ram_name(spec, score))
    n_all = arr.size
    top, random = int(top), int(random)
    if top < 0 or random < 0:
        raise ValueError("top and random must be >= 0")
    ranked = _rank(np.asarray(arr, dtype=float), None, descending=True)
    top = min(top, n_all)
    chosen = ranked[:top]
    rest = ranked[top:]
    chosen += _seeded_order(rest, seed)[: min(random, len(rest))]
    return sorted(chosen)


_SUBSET_RE = re.compile(r"^(?:top(\d+))?(?:\+?random(\d+))?$")


def parse_subset(text: str, n_heads: int) -> tuple[int, int] | None:
    """``all`` -> None; ``auto`` -> None if ``n_heads <= 256`` else (50, 50); ``topN+randomM`` /
    ``topN`` / ``randomM`` -> (N, M)."""
    t = text.strip().lower().replace(" ", "")
    if t == "all":
        return None
    if t == "auto":
        return None if n_heads <= 256 else (50, 50)
    m = _SUBSET_RE.match(t)
    if not t or not m or (m.group(1) is None and m.group(2) is None):
        raise ValueError(f"--subset {text!r}: use all, auto, topN+randomM (e.g. top50+random50), topN or randomM")
    return int(m.group(1) or 0), int(m.group(2) or 0)


def _ram_name(spec, score: str | None) -> str:
    if score is not None:
        return score
    if "ram" in spec.scores:
        return "ram"
    name = spec.selection.get("score")
    if name is None:
        raise ValueError(f"the spec has no 'ram' array and its selection names no score; pass the score name "
                         f"(have: {', '.join(spec.scores)})")
    return name


# ---------------------------------------------------------------------------- comparison


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ascending ranks 1..n, ties get their average rank."""
    x = np.asarray(x, dtype=float)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    avg = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(n)
    ranks[order] = np.repeat(avg, np.diff(bounds))
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties) of two equally shaped arrays, over the
    entries finite in both. ``NaN`` if fewer than 2 such entries or either side is constant."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: shapes differ ({a.shape} vs {b.shape})")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return float("nan")
    ra, rb = _rankdata(a), _rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if den == 0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / den, -1.0, 1.0))


@dataclass
class Comparison:
    """RAM vs a causal effect: Spearman ``rho`` over ``n`` heads and the most-disagreeing heads.

    ``table`` columns: ``kind`` (``high RAM, low effect`` or ``low RAM, high effect``), ``layer``,
    ``head``, ``ram``, ``effect``, ``ram_rank``, ``effect_rank`` (1 = highest), ``rank_diff``
    (``effect_rank - ram_rank``: positive = RAM ranks the head higher than its effect does).
    """

    rho: float
    n: int
    table: object  # pandas.DataFrame
    x_name: str = "ram"
    y_name: str = "effect"

    def format(self) -> str:
        rho = "n/a" if not math.isfinite(self.rho) else f"{self.rho:+.3f}"
        head = f"Spearman({self.x_name}, {self.y_name}) = {rho} over {self.n} heads"
        if len(self.table) == 0:
            return head + "\n(no disagreeing heads)"
        return head + "\n" + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def __str__(self) -> str:
        return self.format()


def compare(ram, effect, top: int = 10, *, measured=None, x_name: str = "ram", y_name: str = "effect"
            ) -> Comparison:
    """Spearman rank correlation between ``ram`` and ``effect`` (``[L, H]``) and the ``top`` heads of
    each disagreement direction (largest rank differences).

    Only heads finite in both (and in ``measured`` when given) take part.
    """
    import pandas as pd

    ram = np.asarray(ram, dtype=float)
    effect = np.asarray(effect, dtype=float)
    if ram.shape != effect.shape or ram.ndim != 2:
        raise ValueError(f"compare needs two [L, H] arrays of the same shape, got {ram.shape} and {effect.shape}")
    ok = np.isfinite(ram) & np.isfinite(effect)
    if measured is not None:
        ok &= np.asarray(measured, dtype=bool)
    idx = np.argwhere(ok)
    x, y = ram[ok], effect[ok]
    rho = spearman(x, y)
    n = int(x.size)
    cols = ["kind", "layer", "head", x_name, y_name, f"{x_name}_rank", f"{y_name}_rank", "rank_diff"]
    if n == 0:
        return Comparison(rho, 0, pd.DataFrame(columns=cols), x_name, y_name)
    rx = n + 1 - _rankdata(x)  # 1 = highest
    ry = n + 1 - _rankdata(y)
    diff = ry - rx
    rows = []
    order_hi = [i for i in np.argsort(-diff, kind="mergesort") if diff[i] > 0][:top]
    order_lo = [i for i in np.argsort(diff, kind="mergesort") if diff[i] < 0][:top]
    for kind, order in ((f"high {x_name}, low {y_name}", order_hi), (f"low {x_name}, high {y_name}", order_lo)):
        for i in order:
            rows.append([kind, int(idx[i, 0]), int(idx[i, 1]), float(x[i]), float(y[i]), float(rx[i]),
                         float(ry[i]), float(diff[i])])
    return Comparison(rho, n, pd.DataFrame(rows, columns=cols), x_name, y_name)


# ---------------------------------------------------------------------------- spec


def _json_float(v):
    return None if v is None or not math.isfinite(float(v)) else float(v)


def add_causal_to_spec(spec, effects: dict, meta: dict | None = None, *, measured=None):
    """A new :class:`~core_eval.spec.HeadSpec` with the effect arrays added to ``scores``.

    ``effects``: name -> ``[L, H]`` array; ``NaN`` marks a head that was not measured. Arrays with
    ``NaN`` are stored with ``0.0`` there, and the 0/1 array ``causal_measured`` is written (from
    ``measured`` if given, else from the arrays' common ``NaN`` pattern, which must then agree).
    The mask applies to the arrays with ``NaN`` and, when ``measured`` is given, also to every
    ``causal_*`` (exact-ablation) array of this call, so a full exact run replaces a stale mask.
    Arrays without ``NaN`` and no ``measured`` (attribution) are dense and leave the mask alone.
    ``meta`` is merged into ``spec.extra["causal"]`` (top-level keys replaced, e.g. ``"exact"`` and
    ``"attribution"`` records), with the list of arrays and the mask description.
    """
    import dataclasses

    L, H = int(spec.model["num_layers"]), int(spec.model["num_heads"])
    arrays = {}
    for name, value in effects.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        a = np.array(value, dtype=np.float64)
        if a.shape != (L, H):
            raise ValueError(f"effect {name!r} has shape {a.shape}, the spec needs ({L}, {H})")
        if np.isinf(a).any():
            raise ValueError(f"effect {name!r} has infinite values")
        arrays[name] = a
    if MEASURED in arrays:
        raise ValueError(f"{MEASURED!r} is written by add_causal_to_spec; pass measured=... instead")
    with_nan = [n for n, a in arrays.items() if np.isnan(a).any()]
    mask = None
    if measured is not None:
        mask = np.asarray(measured, dtype=bool)
        if mask.shape != (L, H):
            raise ValueError(f"measured has shape {mask.shape}, the spec needs ({L}, {H})")
        bad = [n for n in with_nan if np.isnan(arrays[n][mask]).any()]
        if bad:
            raise ValueError(f"effect(s) {bad} are NaN at heads marked measured")
        masked = sorted({*with_nan, *(n for n in arrays if n.startswith("causal_"))})
    elif with_nan:
        pattern = ~np.isnan(arrays[with_nan[0]])
        for n in with_nan[1:]:
            if not np.array_equal(~np.isnan(arrays[n]), pattern):
                raise ValueError(f"effects {with_nan[0]!r} and {n!r} leave different heads unmeasured (NaN); "
                                 "pass measured=... or write them in separate calls")
        mask, masked = pattern, sorted(with_nan)
    scores = dict(spec.scores)
    for name, a in arrays.items():
        scores[name] = np.where(np.isnan(a), UNMEASURED_FILL, a)
    extra = dict(spec.extra)
    causal = dict(extra.get("causal") or {})
    causal.update(meta or {})
    causal["arrays"] = sorted(set(causal.get("arrays", [])) | set(arrays))
    if mask is not None:
        scores[MEASURED] = mask.astype(np.float64)
        causal["measured_mask"] = {"mask": MEASURED, "arrays": masked, "fill": UNMEASURED_FILL,
                                   "n_measured": int(mask.sum()),
                                   "meaning": "1 = head measured; 0 = not measured (value stored as fill)"}
    extra["causal"] = causal
    if spec.selection.get("score") in arrays and spec.rule["rule"] != "manual":
        # the selection ranks an array we replace: re-derive it with the same rule on the new values
        from core_eval.spec.format import _make_selection

        r = spec.rule
        sel = _make_selection(scores, r["rule"], frac=r.get("frac"), k=r.get("k"), seed=r.get("seed", 0),
                              threshold=r.get("threshold"), score=r.get("score"), tiebreak=r.get("tiebreak"),
                              heads=None)
        return dataclasses.replace(spec, scores=scores, selection=sel, extra=extra)
    return dataclasses.replace(spec, scores=scores, extra=extra)


def causal_scores(spec, name: str) -> np.ndarray:
    """A causal array from a spec, with ``NaN`` at heads the mask says were not measured."""
    arr = np.array(spec.score(name), dtype=float)
    mm = (spec.extra.get("causal") or {}).get("measured_mask")
    if mm and name in mm.get("arrays", []) and mm.get("mask") in spec.scores:
        arr[spec.scores[mm["mask"]] < 0.5] = np.nan
    return arr


# ---------------------------------------------------------------------------- CLI


def add_causal_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``core-eval causal`` on an ``argparse`` subparsers object."""
    from core_eval.loading import add_family_argument
    from core_eval.probes import add_probe_arguments

    p = subparsers.add_parser(
        "causal", help="causal check of a RAM ranking: per-head ablation effects on the gold answer",
        description="Measure each head's effect on the gold answer (drop in log-probability and accuracy when "
                    "that head alone is ablated), exactly and/or by attribution patching; write the effects "
                    "into the head spec and report the rank correlation with RAM.")
    p.add_argument("--model", required=True, help="checkpoint directory or cached model id")
    p.add_argument("--spec", required=True, help="head spec with RAM scores")
    p.add_argument("--n", type=int, default=32, help="number of samples")
    add_probe_arguments(p, seed_help="probe seed and random-subset seed")
    add_family_argument(p)
    p.add_argument("--mode", default="zero", choices=MODES, help="ablation mode")
    p.add_argument("--means", default=None, help="head-means file for --mode mean (default: <out>.means."
                   "safetensors if present, else computed on 16 grid_needle samples and saved there)")
    p.add_argument("--subset", default="auto",
                   help="heads for the exact method: all, topN+randomM (e.g. top50+random50), topN, randomM, "
                        "or auto (all if <= 256 heads, else top50+random50)")
    p.add_argument("--method", default="both", choices=METHODS)
    p.add_argument("--score", default=None, help="the RAM array of the spec (default: ram)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top", type=int, default=10, help="rows per direction in the disagreement table")
    p.add_argument("--out", default=None, help="spec to write (default: overwrite --spec)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=run_causal)
    return p


def _means_for_cli(args, model, processor, out: Path):
    from core_eval.means import compute_head_means, load_head_means, means_path_for, save_head_means
    from core_eval.probes import generate, probe_set_hash
    from core_eval.prompting import iter_batches

    if args.means is not None:
        return load_head_means(args.means), {"path": str(args.means)}
    for cand in (means_path_for(out), means_path_for(args.spec)):
        if cand.is_file():
            return load_head_means(cand), {"path": str(cand)}
    ref = generate("grid_needle", 16, seed=0)  # the same default reference set as core_eval.load
    means = compute_head_means(model, iter_batches(processor, ref, batch_size=4), progress=not args.no_progress)
    record = {"probes": "grid_needle", "n": 16, "probe_hash": probe_set_hash(ref)}
    path = save_head_means(means_path_for(out), means, {k: str(v) for k, v in record.items()})
    return means, {**record, "path": str(path)}


def run_causal(args) -> int:
    """``core-eval causal``: see :func:`add_causal_parser`."""
    from core_eval import __version__
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load, load_config
    from core_eval.probes import load_probe, probe_set_hash
    from core_eval.spec import load_head_spec

    if args.n < 1:
        raise ValueError("--n must be >= 1")
    out = Path(args.out or args.spec)
    progress = not getattr(args, "no_progress", False)
    knobs = json.loads(args.knobs)
    # everything that can fail without weights fails first: spec shape, score name, subset, probes
    shape = shape_from_config(load_config(args.model), args.family)
    spec = load_head_spec(args.spec, shape=shape)
    ram_name = _ram_name(spec, args.score)
    ram = spec.score(ram_name)
    sub = parse_subset(args.subset, shape.num_layers * shape.num_heads)
    samples = load_probe(args.probes, n=args.n, seed=args.seed, image_root=args.image_root, **knobs)[: args.n]
    loaded = load(args.model, heads="none", dtype=args.dtype, device=args.device, family=args.family)
    model, processor = loaded.model, loaded.processor
    common = {"probes": str(args.probes), "probe_hash": probe_set_hash(samples), "n_samples": len(samples),
              "seed": args.seed, "knobs": knobs, "mode": args.mode,
              "model": str(args.model), "dtype": str(model.dtype).replace("torch.", ""),
              "core_eval_version": __version__, "ram_score": ram_name}
    means = None
    if args.mode == "mean":
        means, mrec = _means_for_cli(args, model, processor, out)
        common["means"] = mrec
    effects: dict[str, np.ndarray] = {}
    meta: dict = {}
    measured = None
    reports: list[Comparison] = []
    exact = attr = None
    if args.method in ("exact", "both"):
        heads = None if sub is None else causal_subset(spec, *sub, seed=args.seed, score=ram_name)
        exact = exact_effects(model, processor, samples, heads, args.mode, means=means,
                              batch_size=args.batch_size, progress=progress)
        effects.update(exact.arrays())
        measured = exact.measured
        c_lp = compare(ram, exact.logprob_drop, args.top, x_name=ram_name, y_name="logprob_drop")
        c_acc = compare(ram, exact.acc_drop, args.top, x_name=ram_name, y_name="acc_drop")
        reports.append(c_lp)
        meta["exact"] = {**common, "subset": "all" if sub is None else f"top{sub[0]}+random{sub[1]}",
                         "n_heads": len(exact.heads), "baseline_accuracy": float(exact.baseline_correct.mean()),
                         "baseline_logprob": float(exact.baseline_logprob.mean()),
                         "spearman_ram_logprob_drop": _json_float(c_lp.rho),
                         "spearman_ram_acc_drop": _json_float(c_acc.rho)}
        print(f"exact ({args.mode}, {len(exact.heads)} heads, {exact.n} samples): baseline accuracy "
              f"{exact.baseline_correct.mean():.3f}, mean gold log-prob {exact.baseline_logprob.mean():.3f}")
        print(f"Spearman({ram_name}, acc_drop) = {_fmt(c_acc.rho)} over {c_acc.n} heads")
    if args.method in ("attribution", "both"):
        attr = attribution_effects(model, processor, samples, args.mode, means, batch_size=args.batch_size,
                                   progress=progress)
        effects[ATTRIBUTION_LOGPROB] = attr
        c_at = compare(ram, attr, args.top, x_name=ram_name, y_name="attribution")
        reports.append(c_at)
        meta["attribution"] = {**common, "n_heads": int(attr.size),
                               "spearman_ram_attribution": _json_float(c_at.rho)}
        if exact is not None:
            rho = spearman(exact.logprob_drop, attr)
            meta["attribution"]["spearman_vs_exact"] = _json_float(rho)
            print(f"attribution vs exact log-prob drop: Spearman = {_fmt(rho)} over {len(exact.heads)} heads")
    for rep in reports:
        print()
        print(rep.format())
    new = add_causal_to_spec(spec, effects, meta, measured=measured)
    path = new.write(out)
    print(f"\nwrote {path}: {', '.join(sorted(effects))}" + (f" + {MEASURED}" if measured is not None else ""))
    return 0


def _fmt(rho: float) -> str:
    return "n/a" if not math.isfinite(rho) else f"{rho:+.3f}"
