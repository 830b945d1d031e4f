"""The RAM scoring loop: probes -> per-sample masses -> a ``core-head-spec/v1`` file.

Long work is resumable: every finished batch is written to ``<out>.partial/batch_NNNNN.pt``
(temp file + rename), so a killed run loses at most one batch; a rerun with the same settings
continues where it stopped, and the final spec is written atomically before the partial folder is
removed. Under ``accelerate launch`` batches are shared round-robin between processes; the main
process assembles the spec once all are done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core_eval._io import atomic_path, atomic_write
from core_eval.scoring.capture import RamCapture

QUERY_ROWS = ("answer", "last", "generate")


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

    def __post_init__(self):
        if self.query_rows not in QUERY_ROWS:
            raise ValueError(f"query_rows={self.query_rows!r}; use one of {', '.join(QUERY_ROWS)}")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("n and batch_size must be >= 1")
        if not 0 < self.frac <= 1:
            raise ValueError(f"frac={self.frac} must be in (0, 1]")

    def key(self, model_id: str, probe_hash: str, dtype: str | None) -> str:
        """Hash of everything that determines per-batch results (for safe resume): the settings,
        the model, the exact probe contents and the dtype."""
        d = asdict(self)
        d.pop("frac")
        d.pop("only_correct")  # filtering happens at assembly
        if self.query_rows != "generate":
            d.pop("max_new_tokens")
        blob = json.dumps([model_id, probe_hash, str(dtype), d], sort_keys=True)
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
        if cfg.query_rows == "answer":
            rows = _rows_from_mask(amask)
        else:
            rows = (starts - 1)[:, None]
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


def _rows_from_mask(amask: torch.Tensor) -> torch.Tensor:
    """(B, R) rows predicting each answer token (the token's position - 1), -1 padded."""
    rows = [m.nonzero().flatten() - 1 for m in amask]
    R = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_full((R - len(r),), -1)]) for r in rows])


def _eos_ids(model) -> torch.Tensor:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return torch.zeros(0, dtype=torch.long)
    return torch.tensor(eos if isinstance(eos, (list, tuple)) else [eos], dtype=torch.long)


# ---------------------------------------------------------------------------- the loop


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_resume(work_dir: Path, key: str) -> None:
    """Refuse to mix a partial run made with other settings (cheap; called before loading)."""
    meta_path = work_dir / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("key") != key:
            raise ValueError(
                f"{work_dir} holds a partial run with different settings, model, probes or dtype "
                f"({old.get('config')}); delete it or score with the same settings to resume"
            )


def run_scoring(model, processor, samples: Sequence, cfg: ScoreConfig, *, work_dir: Path, key: str,
                model_id: str = "", progress: bool = True) -> dict[str, np.ndarray] | None:
    """Score every sample, resuming from ``work_dir`` (whose batches must carry ``key``). Returns
    stacked per-sample arrays on the main process (``None`` on the others)."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from accelerate.utils import parse_flag_from_env

    # like Accelerator(): ACCELERATE_USE_CPU=true makes a multi-process launch use gloo on CPU
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    work_dir.mkdir(parents=True, exist_ok=True)
    meta_path = work_dir / "meta.json"
    check_resume(work_dir, key)
    if not meta_path.exists() and state.is_main_process:
        atomic_write(meta_path, json.dumps({"key": key, "config": asdict(cfg), "model": model_id}, default=str))
    state.wait_for_everyone()
    batches = [list(range(i, min(i + cfg.batch_size, len(samples)))) for i in range(0, len(samples), cfg.batch_size)]
    mine = [b for b in range(len(batches)) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if not (work_dir / f"batch_{b:05d}.pt").exists()]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="RAM scoring", unit="batch",
               disable=not progress or not state.is_main_process)
    with RamCapture(model) as capture:
        for b in todo:
            out = score_batch(model, processor, [samples[i] for i in batches[b]], cfg, capture)
            _atomic_save(out, work_dir / f"batch_{b:05d}.pt")
            bar.update(1)
    bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    parts = [torch.load(work_dir / f"batch_{b:05d}.pt", weights_only=False) for b in range(len(batches))]
    return {
        "ram": torch.cat([p["ram"] for p in parts]).numpy(),
        "visual_mass": torch.cat([p["visual_mass"] for p in parts]).numpy(),
        "region_frac": torch.cat([p["region_frac"] for p in parts]).numpy(),
        "n_region": torch.cat([p["n_region"] for p in parts]).numpy(),
        "correct": torch.cat([p["correct"] for p in parts]).numpy().astype(bool),
        "rows": torch.cat([p["rows"] for p in parts]).numpy(),
        "ids": [i for p in parts for i in p["ids"]],
    }


def aggregate(per_sample: dict[str, np.ndarray], only_correct: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Head scores ``[L, H]`` (mean over used samples) and a record of which samples were used.

    A sample is used when its region maps to at least one visual token and it has query rows
    (and, with ``only_correct``, the unmodified model answers it correctly).
    """
    use = (per_sample["n_region"] > 0) & (per_sample["rows"] > 0)
    dropped_region = int((per_sample["n_region"] == 0).sum())
    if only_correct:
        use &= per_sample["correct"]
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
                  "revision": getattr(model.config, "_commit_hash", None)}
    scorer = {"name": "ram-v1", "probes": cfg.probes, "probe_hash": probe_hash, "knobs": cfg.knobs,
              "seed": cfg.seed, "query_rows": cfg.query_rows, "dtype": dtype, "batch_size": cfg.batch_size,
              "attention_backend": "core_eval (sdpa + RAM capture)", "family": ad.family.name,
              "core_eval_version": __version__, **record}
    if task is not None:
        scorer["probe_task"] = {"name": task.name, "family": task.family, "eval_seed": task.eval_seed}
    return spec_from_scores(scores, model_info, scorer, rule="top", frac=cfg.frac, shape=ad.shape)


def score(pretrained: str, out: str | Path, cfg: ScoreConfig, *, image_root=None, dtype=None, device=None,
          progress: bool = True, family=None):
    """Load ``pretrained``, score it on ``cfg.probes`` and write the spec to ``out`` (resumable).

    Returns the written :class:`~core_eval.spec.HeadSpec` (``None`` on non-main processes).
    """
    from core_eval.loading import load
    from core_eval.probes import load_probe, probe_set_hash
    from core_eval.probes.tasks import resolve_probes

    out = Path(out)
    source, knobs, task = resolve_probes(cfg.probes, cfg.knobs)  # a task name -> its family
    cfg = replace(cfg, knobs=knobs)  # a task name's YAML knobs, recorded in the spec
    if task is not None and task.source is None and cfg.seed == task.eval_seed:
        warnings.warn(f"seed {cfg.seed} is {task.name}'s evaluation seed: the heads are chosen on the very "
                      "samples the task evaluates; score on another seed for a held-out selection", stacklevel=2)
    samples = load_probe(source, n=cfg.n, seed=cfg.seed, image_root=image_root, **cfg.knobs)
    if len(samples) > cfg.n:
        samples = samples[: cfg.n]
    probe_hash = probe_set_hash(samples)
    model_id = str(Path(pretrained).resolve()) if Path(pretrained).exists() else str(pretrained)
    key = cfg.key(model_id, probe_hash, dtype)
    work = out.with_name(out.name + ".partial")
    check_resume(work, key)  # before the (long) model load
    if any(getattr(s, "videos", None) for s in samples):  # the family must map video tokens: say so before loading
        from core_eval.adapters import family_for_config
        from core_eval.adapters.regions import video_rule
        from core_eval.loading import load_config

        video_rule(family_for_config(load_config(pretrained), family))
    loaded = load(pretrained, heads="none", dtype=dtype, device=device, family=family)
    per_sample = run_scoring(loaded.model, loaded.processor, samples, cfg, work_dir=work, key=key,
                             model_id=model_id, progress=progress)
    if per_sample is None:
        return None
    spec = score_to_spec(pretrained, loaded.model, cfg, per_sample, probe_hash,
                         str(loaded.model.dtype).replace("torch.", ""), task)
    spec.write(out)
    shutil.rmtree(work, ignore_errors=True)
    return spec
