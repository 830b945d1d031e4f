"""The RAM scoring loop: probes -> per-sample masses -> a ``core-head-spec/v1`` file.

Long work is resumable: every finished batch is written to
``<out>.partial/batch_NNNNN.safetensors`` (temp file + rename; :mod:`core_eval.scoring.checkpoints`),
so a killed run loses at most one batch; a rerun with the same settings and the same weights
continues where it stopped (the partial folder is validated before the model loads), and the final
spec is written atomically before the files of the partial folder are removed. Under ``accelerate
launch`` batches are shared round-robin between processes; the main process assembles the spec
once all are done. The spec carries a bootstrap of the ranking (``stability``,
:mod:`core_eval.scoring.stability`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import dataclasses
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core_eval.scoring import checkpoints as ckpt
from core_eval.scoring.capture import RamCapture

#: rows whose attention RAM averages: the teacher-forced rows predicting the gold answer's tokens,
#: the last prompt token, every generated token, or the question's key tokens (the words naming
#: what to retrieve, :func:`~core_eval.probes.families.question_key`: a head that matches the key
#: against the image does it there, before any answer row exists)
QUERY_ROWS = ("answer", "last", "generate", "key")


@dataclass
class ScoreConfig:
    """What is scored and how (everything that changes the numbers; recorded in the spec)."""

    probes: str = "grid_needle"
    n: int = 64
    seed: int = 0
    knobs: dict = field(default_factory=dict)
    query_rows: str = "answer"
    batch_size: int = 8
    only_correct: bool = False
    max_new_tokens: int = 16
    frac: float = 0.05
    bootstrap: int = 1000  # resamples for the spec's stability section (0: none)

    def __post_init__(self):
        if self.query_rows not in QUERY_ROWS:
            raise ValueError(f"query_rows={self.query_rows!r}; use one of {', '.join(QUERY_ROWS)}")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("n and batch_size must be >= 1")
        if not 0 < self.frac <= 1:
            raise ValueError(f"frac={self.frac} must be in (0, 1]")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap={self.bootstrap} must be >= 0 (0: no stability section)")

    def key(self, model_id: str, probe_hash: str, dtype: str | None, weights: dict | None = None) -> str:
        """Hash of everything that determines per-batch results (for safe resume): the settings,
        the model and its weights (:func:`~core_eval.scoring.checkpoints.weights_fingerprint`), the
        exact probe contents and the dtype."""
        d = asdict(self)
        for assembly_only in ("frac", "only_correct", "bootstrap"):  # applied when the spec is built
            d.pop(assembly_only)
        if self.query_rows != "generate":
            d.pop("max_new_tokens")
        blob = json.dumps([model_id, probe_hash, str(dtype), d, weights], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- one batch


@torch.no_grad()
def score_batch(model, processor, samples: Sequence, cfg: ScoreConfig, capture: RamCapture) -> dict:
    """Per-sample masses for one batch. Returns tensors ``ram``/``visual_mass`` ``(B, L, H)``,
    ``region_frac`` ``(B,)`` = |R|/|V|, ``correct`` ``(B,)`` bool, ``rows`` ``(B,)``."""
    from core_eval.adapters.regions import sample_region_masks
    from core_eval.prompting import encode, encode_teacher_forced

    from core_eval.adapters import adapter_for

    adapter = adapter_for(model)
    device = model.device
    if cfg.query_rows == "generate":
        inputs = encode(processor, samples)
        masks = sample_region_masks(processor, inputs, samples, family=adapter)
        T0 = inputs["input_ids"].shape[1]
        rows = torch.full((len(samples), 1), T0 - 1)
        capture.reset(masks.target, rows, capture_decode=True)
        seq = model.generate(**_to(inputs, device), max_new_tokens=cfg.max_new_tokens, do_sample=False)
        new = seq[:, T0:].cpu()
        eos = _eos_ids(model)
        ended = torch.isin(new, eos) if eos.numel() else torch.zeros_like(new, dtype=torch.bool)
        n_tokens = torch.where(ended.any(1), ended.float().argmax(1), torch.full((len(samples),), new.shape[1]))
        steps = torch.arange(max(new.shape[1] - 1, 0))[None, :]
        res = capture.result(steps < (n_tokens[:, None] - 1))
        tok = getattr(processor, "tokenizer", processor)
        texts = [tok.decode(new[b, : n_tokens[b]], skip_special_tokens=True) for b in range(len(samples))]
        from core_eval.probes import exact_match

        correct = torch.tensor([exact_match(t, s.answer, s.aliases) for t, s in zip(texts, samples)])
    else:
        inputs, amask, starts = encode_teacher_forced(processor, samples)
        masks = sample_region_masks(processor, inputs, samples, family=adapter)
        rows = teacher_forced_rows(cfg.query_rows, processor, inputs, amask, starts, samples)
        capture.reset(masks.target, rows)
        logits = model(**_to(inputs, device)).logits.cpu()
        res = capture.result()
        ids = inputs["input_ids"]
        pred = logits[:, :-1].argmax(-1)
        hit = (pred == ids[:, 1:]) | ~amask[:, 1:]
        correct = hit.all(1)
    n_region = masks.target.sum(1).float()
    n_visual = masks.visual.sum(1).float()
    return {"ram": res["ram"], "visual_mass": res["visual_mass"], "rows": res["rows"],
            "region_frac": n_region / n_visual.clamp(min=1), "correct": correct.cpu(),
            "n_region": n_region, "ids": [s.id for s in samples]}


def _to(inputs, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}


def teacher_forced_rows(rule: str, processor, inputs, amask: torch.Tensor, starts: torch.Tensor,
                        samples: Sequence) -> torch.Tensor:
    """``(B, R)`` query rows of a teacher-forced batch (:func:`~core_eval.prompting.encode_teacher_forced`),
    ``-1`` padded, for ``rule``: ``"answer"`` (the rows predicting each answer token: its position
    - 1), ``"last"`` (the last prompt token) or ``"key"`` (:func:`~core_eval.prompting.key_rows`)."""
    if rule == "answer":
        rows = [m.nonzero().flatten() - 1 for m in amask]
        R = max(len(r) for r in rows)
        return torch.stack([torch.cat([r, r.new_full((R - len(r),), -1)]) for r in rows])
    if rule == "key":
        from core_eval.prompting import key_rows

        return key_rows(processor, inputs["input_ids"], starts, samples)
    if rule == "last":
        return (starts - 1)[:, None].to(torch.long)
    raise ValueError(f"query rows {rule!r}; teacher-forced rows are answer, last or key")


def _eos_ids(model) -> torch.Tensor:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return torch.zeros(0, dtype=torch.long)
    return torch.tensor(eos if isinstance(eos, (list, tuple)) else [eos], dtype=torch.long)


# ---------------------------------------------------------------------------- the loop


def batch_ranges(n: int, batch_size: int) -> list[list[int]]:
    """Sample indices of each batch."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def run_scoring(model, processor, samples: Sequence, cfg: ScoreConfig, *, work_dir: Path, key: str,
                model_id: str = "", weights: dict | None = None, progress: bool = True
                ) -> dict[str, np.ndarray] | None:
    """Score every sample, resuming from ``work_dir`` (whose batches must carry ``key``). Returns
    stacked per-sample arrays on the main process (``None`` on the others)."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from accelerate.utils import parse_flag_from_env

    # like Accelerator(): ACCELERATE_USE_CPU=true makes a multi-process launch use gloo on CPU
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    batches = batch_ranges(len(samples), cfg.batch_size)
    batch_ids = [[samples[i].id for i in b] for b in batches]
    done = set(ckpt.check_partial(work_dir, key, weights, batch_ids))
    work_dir.mkdir(parents=True, exist_ok=True)
    if not (work_dir / ckpt.META).exists() and state.is_main_process:
        ckpt.write_meta(work_dir, key, asdict(cfg), model_id, weights)
    state.wait_for_everyone()
    mine = [b for b in range(len(batches)) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if b not in done]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="RAM scoring", unit="batch",
               disable=not progress or not state.is_main_process)
    with RamCapture(model) as capture:
        for b in todo:
            out = score_batch(model, processor, [samples[i] for i in batches[b]], cfg, capture)
            ckpt.save_batch(out, ckpt.batch_path(work_dir, b), key)
            bar.update(1)
    bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return ckpt.load_batches(work_dir, key, batch_ids)


def used_samples(per_sample: dict[str, np.ndarray], only_correct: bool) -> np.ndarray:
    """Boolean ``(N,)``: samples whose region maps to at least one visual token and that have query
    rows (and, with ``only_correct``, that the unmodified model answers correctly)."""
    use = (per_sample["n_region"] > 0) & (per_sample["rows"] > 0)
    if only_correct:
        use &= per_sample["correct"]
    return use


def aggregate(per_sample: dict[str, np.ndarray], only_correct: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Head scores ``[L, H]`` (mean over used samples) and a record of which samples were used.

    A sample is used when its region maps to at least one visual token and it has query rows
    (and, with ``only_correct``, the unmodified model answers it correctly).
    """
    use = used_samples(per_sample, only_correct)
    dropped_region = int((per_sample["n_region"] == 0).sum())
    n = int(use.sum())
    if n == 0:
        raise ValueError(
            "no sample is usable for RAM: "
            + ("the model answers none correctly (drop --only-correct)" if only_correct
               else "no target region maps to a visual token")
        )
    ram = per_sample["ram"][use]
    lift = ram / per_sample["region_frac"][use][:, None, None]
    scores = {
        "ram": ram.mean(0),
        "lift": lift.mean(0),
        "visual_mass": per_sample["visual_mass"][use].mean(0),
        "std": ram.std(0),
        "n": np.full(ram.shape[1:], float(n)),
    }
    record = {"n_samples": len(use), "n_used": n, "accuracy": float(per_sample["correct"].mean()),
              "dropped_empty_region": dropped_region, "only_correct": only_correct}
    return scores, record


def score_to_spec(pretrained: str, model, cfg: ScoreConfig, per_sample: dict, probe_hash: str, dtype: str,
                  task=None):
    """Build the head spec (dense scores + a default top-``frac`` selection); ``task`` is the
    :class:`~core_eval.probes.tasks.ProbeTask` that ``cfg.probes`` named, if any."""
    from core_eval import __version__
    from core_eval.adapters import adapter_for
    from core_eval.spec import spec_from_scores

    scores, record = aggregate(per_sample, cfg.only_correct)
    ad = adapter_for(model)
    model_info = {"name": str(pretrained), "architecture": type(model).__name__,
                  "model_type": getattr(model.config, "model_type", None),
                  "revision": getattr(model.config, "_commit_hash", None)}
    scorer = {"name": "ram-v1", "probes": cfg.probes, "probe_hash": probe_hash, "knobs": cfg.knobs,
              "seed": cfg.seed, "query_rows": cfg.query_rows, "dtype": dtype, "batch_size": cfg.batch_size,
              "attention_backend": "core_eval (sdpa + RAM capture)", "family": ad.family.name,
              "core_eval_version": __version__, **record}
    if task is not None:
        scorer["probe_task"] = {"name": task.name, "family": task.family, "eval_seed": task.eval_seed}
    spec = spec_from_scores(scores, model_info, scorer, rule="top", frac=cfg.frac, shape=ad.shape)
    if cfg.bootstrap:
        spec = dataclasses.replace(spec, stability=_stability(per_sample, cfg, len(spec.heads)))
    return spec


def _stability(per_sample: dict, cfg: ScoreConfig, k: int) -> dict:
    """The bootstrap of the top-``k`` ranking by RAM (ties by lift) over the used samples."""
    from core_eval.scoring.stability import bootstrap_stability

    use = used_samples(per_sample, cfg.only_correct)
    ram = per_sample["ram"][use]
    lift = ram / per_sample["region_frac"][use][:, None, None]
    return bootstrap_stability(ram, lift, k, n_boot=cfg.bootstrap, seed=cfg.seed, frac=cfg.frac)


def score(pretrained: str, out: str | Path, cfg: ScoreConfig, *, image_root=None, dtype=None, device=None,
          progress: bool = True, family=None):
    """Load ``pretrained``, score it on ``cfg.probes`` and write the spec to ``out`` (resumable).

    Returns the written :class:`~core_eval.spec.HeadSpec` (``None`` on non-main processes).
    """
    from core_eval.loading import load
    from core_eval.probes import load_probe, probe_set_hash
    from core_eval.probes.tasks import resolve_probes

    out = Path(out)
    work = ckpt.check_outputs(out)  # --out a directory, <out>.partial a file: before any work
    source, knobs, task = resolve_probes(cfg.probes, cfg.knobs)  # a task name -> its family
    cfg = replace(cfg, knobs=knobs)  # a task name's YAML knobs, recorded in the spec
    if task is not None and task.source is None and cfg.seed == task.eval_seed:
        warnings.warn(f"seed {cfg.seed} is {task.name}'s evaluation seed: the heads are chosen on the very "
                      "samples the task evaluates; score on another seed for a held-out selection", stacklevel=2)
    samples = load_probe(source, n=cfg.n, seed=cfg.seed, image_root=image_root, **cfg.knobs)
    if len(samples) > cfg.n:
        samples = samples[: cfg.n]
    if cfg.query_rows == "key":  # every probe must name its key: say which does not before the model load
        from core_eval.probes.families import question_key

        for s in samples:
            question_key(s)
    probe_hash = probe_set_hash(samples)
    model_id = str(Path(pretrained).resolve()) if Path(pretrained).exists() else str(pretrained)
    weights = ckpt.weights_fingerprint(pretrained)
    key = cfg.key(model_id, probe_hash, dtype, weights)
    # the partial folder, every finished batch included, is checked before the (long) model load
    ckpt.check_partial(work, key, weights, [[samples[i].id for i in b] for b in batch_ranges(len(samples), cfg.batch_size)])
    if any(getattr(s, "videos", None) for s in samples):  # the family must map video tokens: say so before loading
        from core_eval.adapters import family_for_config
        from core_eval.adapters.regions import video_rule
        from core_eval.loading import load_config

        video_rule(family_for_config(load_config(pretrained), family))
    loaded = load(pretrained, heads="none", dtype=dtype, device=device, family=family)
    per_sample = run_scoring(loaded.model, loaded.processor, samples, cfg, work_dir=work, key=key,
                             model_id=model_id, weights=weights, progress=progress)
    if per_sample is None:
        return None
    spec = score_to_spec(pretrained, loaded.model, cfg, per_sample, probe_hash,
                         str(loaded.model.dtype).replace("torch.", ""), task)
    spec.write(out)
    ckpt.remove_partial(work)  # only the files it wrote
    return spec
