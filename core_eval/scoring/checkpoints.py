"""The partial folder of a resumable ``core-eval score`` run: ``<out>.partial/``.

Layout (everything here is written by :mod:`core_eval.scoring.ram`, atomically)::

    meta.json                  {"format", "key", "config", "model", "weights"}
    batch_00000.safetensors    tensors ram / visual_mass (B, L, H), region_frac / correct /
                               n_region / rows (B,); metadata "key" and "ids" (JSON list of sample ids)

Batches are safetensors (plain tensors, nothing executable; a pickle is never loaded). The resume
key covers the settings, the probes, the dtype and a fingerprint of the weights
(:func:`weights_fingerprint`), so a rerun after the checkpoint changed is refused instead of
mixing two models in one spec. :func:`check_partial` validates the folder (and every finished
batch) before the model loads, naming the bad file; :func:`remove_partial` deletes only the files
this module writes and leaves anything else (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import torch

from core_eval._io import atomic_path, atomic_write

FORMAT = "core-eval-ram-partial/v2"
META = "meta.json"
_BATCH = re.compile(r"^batch_(\d{5})\.safetensors$")
_OURS = re.compile(r"^(meta\.json|batch_\d{5}\.safetensors)$|^\.(meta\.json|batch_\d{5}\.safetensors)\..*\.tmp$")
_PER_HEAD = ("ram", "visual_mass")  # (B, L, H)
_PER_SAMPLE = ("region_frac", "correct", "n_region", "rows")  # (B,)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")
_CONFIG_SUFFIXES = (".json", ".jinja", ".model", ".txt")  # configs, processor, tokenizer, chat template
_SAMPLES, _CHUNK = 8, 4096


class PartialRunError(ValueError):
    """The partial folder (or the output path) cannot be used; the message names the file and the fix."""


def batch_path(work_dir: Path, b: int) -> Path:
    return Path(work_dir) / f"batch_{b:05d}.safetensors"


def _restart(work_dir: Path) -> str:
    return f"delete it to score from scratch (rm -r {work_dir})"


# ---------------------------------------------------------------------------- weights


def _file_digest(path: Path, size: int) -> str:
    """sha256 of a safetensors header (tensor names, dtypes, shapes, offsets) and of a few 4 KiB
    chunks spread over the file: cheap even for large checkpoints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            n = int.from_bytes(f.read(8), "little")
            if 0 < n <= size - 8:
                h.update(f.read(n))
        for i in range(_SAMPLES):
            f.seek(max(0, (size - _CHUNK) * i // max(1, _SAMPLES - 1)))
            h.update(f.read(_CHUNK))
    return h.hexdigest()[:16]


def _checkpoint_dir(pretrained: str) -> Path | None:
    p = Path(pretrained)
    if p.is_dir():
        return p
    try:  # a model id in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(pretrained), local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached / not a repo id: nothing to fingerprint)
        return None


def weights_fingerprint(pretrained: str) -> dict:
    """What identifies the checkpoint ``pretrained``: per weight, config, processor and tokenizer
    file its size, modification time and a content digest. ``{"unresolved": id}`` when no local
    files are found."""
    root = _checkpoint_dir(pretrained)
    if root is None:
        return {"unresolved": str(pretrained)}
    files = {}
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.suffix not in _WEIGHT_SUFFIXES + _CONFIG_SUFFIXES:
            continue
        st = f.stat()
        files[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": _file_digest(f, st.st_size)}
    return {"dir": str(root.resolve()), "files": files}


def _weights_diff(old: dict, new: dict) -> str:
    of, nf = old.get("files", {}), new.get("files", {})
    changed = [n for n in sorted(set(of) | set(nf)) if of.get(n) != nf.get(n)]
    return ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") if changed else "the checkpoint location"


# ---------------------------------------------------------------------------- checks before the work


def check_outputs(out: Path) -> Path:
    """``out`` must be a file path (or absent) and ``<out>.partial`` a folder (or absent). Returns
    the partial folder."""
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    if out.is_dir():
        raise PartialRunError(f"--out {out} is a directory; pass the head-spec file to write, e.g. {out / 'spec.json'}")
    if work.exists() and not work.is_dir():
        raise PartialRunError(f"{work} (where the partial run of {out} is kept) is a file, not a folder; "
                              f"move or delete it, or choose another --out")
    return work


def _read_meta(work_dir: Path) -> dict | None:
    path = Path(work_dir) / META
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PartialRunError(f"{path} is corrupt ({e}); {_restart(work_dir)}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), str):
        raise PartialRunError(f"{path} is not a partial-run record (no 'key'); {_restart(work_dir)}")
    return meta


def check_partial(work_dir: Path, key: str, weights: dict, batch_ids: Sequence[Sequence[str]]) -> list[int]:
    """Validate a partial folder against this run (cheap: called before the model loads).

    ``batch_ids[b]`` are the sample ids of batch ``b``. Refuses a folder made with other settings,
    probes, dtype or weights, an old pickle batch, and any finished batch that does not load or
    does not hold exactly the expected samples. Returns the indices of the finished batches.
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    meta = _read_meta(work_dir)
    pickles = sorted(work_dir.glob("batch_*.pt"))
    if pickles:
        raise PartialRunError(f"{pickles[0]} is a pickle batch from an older core_eval; it is not loaded (a pickle "
                              f"can run code). {_restart(work_dir)}")
    done = sorted(int(m.group(1)) for f in work_dir.iterdir() if (m := _BATCH.match(f.name)))
    if meta is None:
        if done:
            raise PartialRunError(f"{work_dir} holds batches but no {META}; {_restart(work_dir)}")
        return []
    if meta["key"] != key:
        old_w = meta.get("weights")
        if old_w is not None and old_w != weights:
            raise PartialRunError(
                f"{work_dir} holds a partial run begun on other weights or checkpoint files "
                f"({_weights_diff(old_w, weights)} changed since): resuming would mix two checkpoints in one spec. "
                f"Restore the checkpoint, or {_restart(work_dir)}")
        raise PartialRunError(
            f"{work_dir} holds a partial run with different settings, model, probes or dtype "
            f"({meta.get('config')}); score with the same settings to resume, or {_restart(work_dir)}")
    for b in done:
        if b >= len(batch_ids):
            raise PartialRunError(f"{batch_path(work_dir, b)}: batch {b} is outside this run "
                                  f"({len(batch_ids)} batches); {_restart(work_dir)}")
        load_batch(work_dir, b, key, batch_ids[b])
    return done


# ---------------------------------------------------------------------------- batches


def write_meta(work_dir: Path, key: str, config: dict, model_id: str, weights: dict) -> None:
    atomic_write(Path(work_dir) / META, json.dumps({"format": FORMAT, "key": key, "config": config,
                                                    "model": model_id, "weights": weights}, default=str))


def save_batch(out: dict, path: Path, key: str) -> None:
    """One batch (see :func:`~core_eval.scoring.ram.score_batch`) as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: out[k].detach().cpu().contiguous() for k in _PER_HEAD + _PER_SAMPLE}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "key": key, "ids": json.dumps(list(out["ids"]))})


def load_batch(work_dir: Path, b: int, key: str, ids: Sequence[str]) -> dict:
    """Read and check batch ``b``: the run's key, exactly the samples ``ids``, consistent shapes."""
    from safetensors import safe_open

    path = batch_path(work_dir, b)
    fix = f"delete {path} to score that batch again"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for bad files)
        raise PartialRunError(f"{path} is not a readable batch ({type(e).__name__}: {e}); {fix}") from None
    if meta.get("key") != key:
        raise PartialRunError(f"{path} was written by another run (key {meta.get('key')!r}, this run {key!r}); {fix}")
    try:
        got_ids = json.loads(meta.get("ids", ""))
    except json.JSONDecodeError:
        got_ids = None
    if got_ids != list(ids):
        raise PartialRunError(f"{path} holds samples {got_ids!r:.120}, not this batch's {list(ids)!r:.120}; {fix}")
    missing = [k for k in _PER_HEAD + _PER_SAMPLE if k not in tensors]
    if missing:
        raise PartialRunError(f"{path} lacks {', '.join(missing)}; {fix}")
    B = len(ids)
    bad = [k for k in _PER_HEAD if tensors[k].dim() != 3 or tensors[k].shape[0] != B
           or tensors[k].shape != tensors[_PER_HEAD[0]].shape]
    bad += [k for k in _PER_SAMPLE if tuple(tensors[k].shape) != (B,)]
    if bad:
        shapes = {k: tuple(tensors[k].shape) for k in _PER_HEAD + _PER_SAMPLE}
        raise PartialRunError(f"{path} has inconsistent shapes for {B} samples: {shapes}; {fix}")
    return {**tensors, "ids": list(ids)}


def load_batches(work_dir: Path, key: str, batch_ids: Sequence[Sequence[str]]) -> dict:
    """Every batch, concatenated: numpy arrays per sample plus ``ids``."""
    parts = [load_batch(work_dir, b, key, ids) for b, ids in enumerate(batch_ids)]
    out = {k: torch.cat([p[k] for p in parts]).numpy() for k in _PER_HEAD + _PER_SAMPLE}
    out["correct"] = out["correct"].astype(bool)
    out["ids"] = [i for p in parts for i in p["ids"]]
    return out


def remove_partial(work_dir: Path) -> None:
    """Delete what this module wrote (meta, batches, their temp files); a folder holding anything
    else is left in place with a warning naming the other files."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return
    others = []
    for f in sorted(work_dir.iterdir()):
        if f.is_file() and _OURS.match(f.name):
            f.unlink()
        else:
            others.append(f.name)
    if others:
        warnings.warn(f"left {work_dir} in place: it holds files core_eval did not write ({', '.join(others[:5])}"
                      f"{' ...' if len(others) > 5 else ''})", stacklevel=2)
    else:
        os.rmdir(work_dir)
