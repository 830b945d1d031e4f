"""Per-head causal effects: exact single-head ablation and attribution patching (see the package
doc for the method and the sign convention: positive = ablating the head hurts the gold answer)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .answers import _answer_logits, _encode_batches, _scores_from_logits, _to_device, answer_scores
from .spec_arrays import EXACT_ACC, EXACT_LOGPROB, EXACT_LOGPROB_STD

MODES = ("zero", "mean")


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
