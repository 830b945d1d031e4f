"""The VLMEvalKit integration's harness-free half: model arguments, run names, probe datasets.

Nothing here imports ``vlmeval`` (importing it takes ~10 s), so names can be computed, arguments
validated and dataset TSVs written cheaply.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from core_eval._io import atomic_write
from core_eval.integrations.run_names import (  # noqa: F401 (re-exported)
    default_base_name, intervention_identity, intervention_tag)
from core_eval.options import ModelArgsError, args_table, coerce, make_plan, split_core_args  # noqa: F401 (make_plan re-exported)

# ----------------------------------------------------------------------------- model arguments

#: Wrapper arguments besides the intervention's (:class:`core_eval.options.CoreArgs`). name -> (type, help).
LOAD_ARGS: dict[str, tuple[type, str]] = {
    "pretrained": (str, "checkpoint directory or cached model id (required)"),
    "dtype": (str, "auto | float32 | bfloat16 | float16 (default: transformers' default)"),
    "device": (str, "device_map: cpu | cuda | cuda:N | auto (default: cuda when available, else cpu)"),
    "revision": (str, "checkpoint revision"),
    "attn_implementation": (str, "attention backend of the language model (default sdpa)"),
    "max_new_tokens": (int, "generation budget; default: the probe task's max_gen_toks on core_* "
                            f"datasets, {512} elsewhere"),
    "log_prompts": (bool, "append every chat-templated prompt and its prediction to "
                          "<work_dir>/<model>/core_eval_prompts.jsonl"),
}
DEFAULT_MAX_NEW_TOKENS = 512
#: Arguments that change predictions without changing the intervention: part of the identity
#: check against an existing work dir (see :func:`check_identity`).
IDENTITY_LOAD_ARGS = ("pretrained", "dtype", "revision", "attn_implementation", "max_new_tokens")


def core_args_table() -> dict[str, tuple[type, str]]:
    """The intervention arguments shared with lm-eval's ``core_hf`` (derived from ``CoreArgs``)."""
    return args_table()


def parse_arg_string(text: str | None) -> dict[str, str]:
    """``"pretrained=DIR,heads=0:0;1:2,ablation=zero"`` -> dict (lm-eval's ``--model_args`` syntax;
    separate explicit heads with ``;``)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ModelArgsError(f"model args: {part!r} is not KEY=VALUE (separate arguments with ',' "
                                 "and explicit heads with ';', e.g. heads=0:0;1:2)")
        key, value = part.split("=", 1)
        if key.strip() in out:
            raise ModelArgsError(f"model args: {key.strip()!r} given twice")
        out[key.strip()] = value.strip()
    return out


def split_model_args(args: dict | str) -> tuple[dict, dict]:
    """Type-check and split model arguments into ``(core, load)``; unknown keys are an error
    listing the valid ones. ``args`` is a dict or a ``KEY=VALUE,...`` string."""
    if isinstance(args, str):
        args = parse_arg_string(args)
    core, rest = split_core_args(args, harness=LOAD_ARGS, where="core VLMEvalKit model",
                                 harness_help={k: h for k, (_, h) in LOAD_ARGS.items()},
                                 harness_name="wrapper (loading)", noun="argument(s)")
    load = {key: coerce(key, value, *LOAD_ARGS[key]) for key, value in rest.items()}
    if not load.get("pretrained"):
        raise ModelArgsError("core VLMEvalKit model: needs pretrained=PATH_OR_ID")
    return core, load


# ----------------------------------------------------------------------------- run names

_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def run_name(base: str | None, plan, *, core: dict, load: dict) -> str:
    """``<base>__<intervention tag>[-mnt<N>]``; ``base`` defaults to ``core-<checkpoint name>``."""
    base = base or default_base_name(load["pretrained"])
    if not _NAME_OK.fullmatch(base):
        raise ModelArgsError(f"model name {base!r}: use letters, digits, '.', '_' and '-' only")
    if "__" in base:
        raise ModelArgsError(f"model name {base!r}: '__' is reserved for the intervention suffix")
    name = f"{base}__{intervention_tag(plan, seed=core.get('seed', 0))}"
    if load.get("max_new_tokens") is not None:
        name += f"-mnt{int(load['max_new_tokens'])}"
    return name


def run_identity(plan, core: dict, load: dict) -> dict:
    """What must match for an existing work-dir record to be reused under the same name."""
    pretrained = str(load["pretrained"])
    if Path(pretrained).exists():
        pretrained = str(Path(pretrained).resolve())
    return {"intervention": intervention_identity(plan),
            "load": {k: (pretrained if k == "pretrained" else load.get(k)) for k in IDENTITY_LOAD_ARGS}}


# ----------------------------------------------------------------------------- probe datasets

#: Substrings in dataset names that make VLMEvalKit pick special judges / circular evaluation.
JUDGE_TRIGGERS = ("mmbench", "ccbench", "circular", "mmcr", "mathvista", "mathverse", "mathvision",
                  "dynamath", "mmvet", "llavabench", "wemath", "mmmu", "mmt", "mmsci", "moat", "logicvista",
                  "mmlongbench", "mmdu", "dude", "slidevqa", "mia-bench", "wildvision", "mmalignbench",
                  "vdc", "videommlu", "moviechat", "ocr_reasoning", "vl-rewardbench", "aesbench", "blink",
                  "lego", "textvqa", "chartqa", "ocrvqa", "gqa", "docvqa", "infovqa", "video", "mme")
NAME_RE = re.compile(r"(?P<base>core_[a-z0-9_]+?)(?:-n(?P<n>\d+))?(?:-s(?P<seed>\d+))?")


@dataclass(frozen=True)
class ProbeDataset:
    """One VLMEvalKit dataset made from a core_eval probe family (mirrors an lm-eval task)."""

    name: str                 # VLMEvalKit dataset name, e.g. core_grid_needle or core_grid_needle-n8
    task: str                 # the lm-eval task it mirrors (same family, seed, knobs, prompt)
    family: str
    n: int
    seed: int
    knobs: dict = field(default_factory=dict)
    kind: str = "vqa"         # vqa | mcq
    max_gen_toks: int = 16
    until: tuple[str, ...] = ("\n\n",)

    @property
    def base(self) -> str:
        return self.task + ("_mc" if self.kind == "mcq" else "")


class _TaskLoader(yaml.SafeLoader):
    """YAML loader for lm-eval task files: ``!function utils.x`` -> ``"utils.x"``."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))


def _read_yaml(path: Path) -> dict:
    data = yaml.load(path.read_text(), Loader=_TaskLoader) or {}
    if "include" in data:
        base = _read_yaml(path.parent / data.pop("include"))
        data = {**base, **data}
    return data


def tasks_dir() -> Path:
    from core_eval.resources import tasks_dir as _tasks_dir

    return _tasks_dir()


@functools.lru_cache(maxsize=None)
def _catalog() -> tuple[dict[str, ProbeDataset], dict[str, tuple[str, ...]]]:
    """Datasets and groups, read from the lm-eval task YAMLs (the single source of truth)."""
    datasets: dict[str, ProbeDataset] = {}
    groups: dict[str, tuple[str, ...]] = {}
    for path in sorted(tasks_dir().glob("core_*.yaml")):
        cfg = _read_yaml(path)
        if "group" in cfg:
            groups[cfg["group"]] = tuple(cfg["task"])
            continue
        if cfg.get("custom_dataset") != "utils.probe_dataset":
            continue  # text-only tasks: no images, not a VLMEvalKit dataset
        kw, gen = cfg.get("dataset_kwargs", {}), cfg.get("generation_kwargs", {})
        ds = ProbeDataset(name=cfg["task"], task=cfg["task"], family=kw["probe_family"], n=int(kw["probe_n"]),
                          seed=int(kw["probe_seed"]), knobs=dict(kw.get("probe_knobs") or {}),
                          max_gen_toks=int(gen.get("max_gen_toks", 16)), until=tuple(gen.get("until") or ()))
        datasets[ds.name] = ds
        if ds.family == "grid_needle":  # 4-option multiple choice over the grid's cell types
            mc = replace(ds, name=ds.name + "_mc", kind="mcq")
            datasets[mc.name] = mc
    for group, members in list(groups.items()):
        groups[group] = tuple(m for m in members if m in datasets)
        groups[group + "_mc"] = tuple(m + "_mc" for m in groups[group] if m + "_mc" in datasets)
        if not groups[group + "_mc"]:
            del groups[group + "_mc"]
    for name in list(datasets) + list(groups):
        check_dataset_name(name)
    return datasets, groups


def check_dataset_name(name: str) -> str:
    low = name.lower()
    bad = [t for t in JUDGE_TRIGGERS if t in low]
    if bad:
        raise ValueError(f"dataset name {name!r} contains {bad}, which VLMEvalKit maps to special judges")
    return name


def dataset_names() -> list[str]:
    """Base dataset names (each also takes ``-n<N>`` / ``-s<SEED>`` suffixes)."""
    return list(_catalog()[0])


def dataset_groups() -> dict[str, tuple[str, ...]]:
    return dict(_catalog()[1])


def expand_data_names(names) -> list[str]:
    """Group names (``core_probes``, ``core_probes_hard``, ``..._mc``) -> member datasets, keeping
    suffixes (``core_probes-n8`` -> ``core_grid_needle-n8``, ...); other names pass through."""
    out: list[str] = []
    groups = _catalog()[1]
    for name in names:
        m = NAME_RE.fullmatch(name)
        if m and m.group("base") in groups:
            suffix = name[len(m.group("base")):]
            out.extend(member + suffix for member in groups[m.group("base")])
        else:
            out.append(name)
    return out


def probe_dataset(name: str) -> ProbeDataset | None:
    """The dataset behind ``name`` (``core_grid_needle``, ``core_grid_needle_mc-n8-s3``) or None."""
    m = NAME_RE.fullmatch(name)
    if not m or m.group("base") not in _catalog()[0]:
        return None
    ds = _catalog()[0][m.group("base")]
    n = ds.n if m.group("n") is None else int(m.group("n"))
    if n < 1:
        raise ValueError(f"dataset {name}: n must be >= 1")
    seed = ds.seed if m.group("seed") is None else int(m.group("seed"))
    return replace(ds, name=name, n=n, seed=seed)


@functools.lru_cache(maxsize=None)
def task_utils():
    """``task_configs/utils.py``: the lm-eval tasks' prompt and metric functions, loaded by path as
    lm-eval does, so both harnesses share one ``doc_to_text`` and one ``process_results``."""
    path = tasks_dir() / "utils.py"
    spec = importlib.util.spec_from_file_location("core_eval_task_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lmu_root(root: str | os.PathLike | None = None) -> Path:
    """Where VLMEvalKit looks for ``<Name>.tsv``: ``$LMUData`` (created) or ``~/LMUData``."""
    if root is None:
        root = os.environ.get("LMUData") or os.path.join(os.path.expanduser("~"), "LMUData")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _mcq_options(sample, index: int, seed: int) -> tuple[list[str], str]:
    """4 options (the answer + 3 other cell types of the same grid), shuffled deterministically."""
    others = sorted({c for c in sample.meta["cells"] if c != sample.answer})
    if len(others) < 3:
        raise ValueError(f"{sample.id}: the grid has fewer than 3 other cell types for MCQ options")
    rng = random.Random(f"core-mc-{seed}-{index}")
    options = rng.sample(others, 3) + [sample.answer]
    rng.shuffle(options)
    return options, string.ascii_uppercase[options.index(sample.answer)]


def _mcq_question(question: str) -> str:
    """The grid question without its free-form answer instruction ("Answer with ...")."""
    head, sep, _ = question.rpartition(" Answer with")
    return head if sep else question


def dataset_rows(ds: ProbeDataset) -> list[dict]:
    """TSV rows: index, image (base64 PNG; a list of them for multi-image), image_path, question,
    answer, aliases (JSON), id, family, category, n_images, boxes (JSON), meta (JSON); MCQ rows add
    A-D, answer = letter, answer_text."""
    from core_eval.probes import generate

    rows = []
    for i, s in enumerate(generate(ds.family, ds.n, seed=ds.seed, **ds.knobs)):
        images = [_png_b64(im) for im in s.images]
        names = [f"{i}_{k}_{hashlib.md5(b.encode()).hexdigest()[:10]}.png" for k, b in enumerate(images)]
        row = {
            "index": i,
            "image": images[0] if len(images) == 1 else str(images),
            "image_path": names[0] if len(names) == 1 else str(names),
            "question": s.question,
            "answer": s.answer,
            "aliases": json.dumps(list(s.aliases)),
            "id": s.id,
            "family": s.family,
            "category": ds.base,
            "n_images": len(images),
            "boxes": json.dumps([b.to_dict() for b in s.boxes]),
            "meta": json.dumps(s.meta, sort_keys=True),
        }
        if ds.kind == "mcq":
            options, letter = _mcq_options(s, i, ds.seed)
            row.update({"question": _mcq_question(s.question), "answer": letter, "answer_text": s.answer,
                        "aliases": "[]", **dict(zip("ABCD", options))})
        rows.append(row)
    return rows


def export_dataset(name: str, root: str | os.PathLike | None = None) -> Path:
    """Write ``<root>/<name>.tsv`` (``root`` = ``$LMUData``) for a core probe dataset; rewritten only
    when its content changed. Returns the path."""
    ds = probe_dataset(name)
    if ds is None:
        raise KeyError(f"{name!r} is not a core probe dataset; known: {dataset_names()} "
                       "(+ optional -n<N> / -s<SEED> suffixes)")
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(dataset_rows(ds)).to_csv(buf, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL)
    text = buf.getvalue()
    path = lmu_root(root) / f"{name}.tsv"
    if not path.is_file() or path.read_text() != text:
        atomic_write(path, text)
    return path


def read_tsv(path) -> Any:
    """The TSV as strings (VLMEvalKit's own loader would turn codes like ``0123`` into ints)."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
