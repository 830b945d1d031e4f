"""VLMEvalKit dataset classes for the core_eval probes (import ``vlmeval``).

- :class:`CoreProbeDataset` (TYPE ``VQA``): the lm-eval probe tasks. Prompt = the task's own
  ``doc_to_text`` (question + "Answer the question using a single word or phrase."), with each
  ``<image>`` placeholder turned into an image entry exactly as lm-eval's ``hf-multimodal`` does;
  scored with the task's ``process_results`` (``exact_match``, ``relaxed_match``).
- :class:`CoreProbeMCQDataset` (TYPE ``MCQ``): grid-needle as 4-option multiple choice, prompted,
  parsed and scored by VLMEvalKit's own ``ImageMCQDataset`` (use ``--judge exact_matching``).

Both read ``$LMUData/<name>.tsv`` (written by :func:`~._common.export_dataset` when the dataset is
built; nothing is downloaded) and write images as the TSV's exact PNG bytes (VLMEvalKit's default
``dump_image`` re-encodes to ``.jpg``, which would change pixels between harnesses).
"""

from __future__ import annotations

import base64
import json
import os
import os.path as osp

import pandas as pd
from vlmeval.dataset import ImageBaseDataset, ImageMCQDataset
from vlmeval.smp import dump, load, toliststr

from core_eval._io import atomic_write

from ._common import export_dataset, lmu_root, probe_dataset, read_tsv, task_utils

IMAGE_PLACEHOLDER = "<image>"


class _CoreProbeMixin:
    """Local TSV + lossless image files; names registered in ``_NAMES`` by ``register_datasets``."""

    MODALITY = "IMAGE"
    DATASET_URL: dict = {}
    DATASET_MD5: dict = {}
    _KIND = "vqa"
    _NAMES: set[str] = set()

    def __init__(self, dataset, **kwargs):
        lmu_root()  # create $LMUData first: VLMEvalKit falls back to ~/LMUData for a missing one
        super().__init__(dataset=dataset, **kwargs)

    @classmethod
    def supported_datasets(cls):
        return sorted(cls._NAMES)

    @classmethod
    def register(cls, name: str) -> None:
        spec = probe_dataset(name)
        if spec is None or spec.kind != cls._KIND:
            raise KeyError(f"{name!r} is not a core {cls._KIND} probe dataset")
        cls._NAMES.add(name)

    def load_data(self, dataset):
        self.probe = probe_dataset(dataset)
        self.data_path = str(export_dataset(dataset))
        return read_tsv(self.data_path)

    def dump_image(self, line):
        os.makedirs(self.img_root, exist_ok=True)
        paths = []
        for b64, name in zip(toliststr(line["image"]), toliststr(line["image_path"])):
            path = osp.join(self.img_root, name)  # content-hashed name: never stale
            if not osp.exists(path):
                atomic_write(path, base64.b64decode(b64))
            paths.append(path)
        return paths


class CoreProbeDataset(_CoreProbeMixin, ImageBaseDataset):
    """A core_eval probe task as a VLMEvalKit VQA dataset (``core_grid_needle``, ``...-n8``)."""

    TYPE = "VQA"
    _KIND = "vqa"
    _NAMES: set[str] = set()

    def build_prompt(self, line):
        if isinstance(line, int):
            line = self.data.iloc[line]
        paths = self.dump_image(line)
        # The lm-eval task's prompt, split at its placeholders like lm-eval's hf-multimodal
        # (``apply_chat_template`` with interleave=True): same text, same image positions.
        text = task_utils().doc_to_text({"n_images": len(paths), "question": line["question"]})
        parts = text.split(IMAGE_PLACEHOLDER)
        if len(parts) - 1 != len(paths):
            raise ValueError(f"{self.dataset_name} index {line['index']}: {len(paths)} images, "
                             f"{len(parts) - 1} placeholders")
        msgs, images = [], iter(paths)
        for i, part in enumerate(parts):
            if part:
                msgs.append(dict(type="text", value=part))
            if i < len(parts) - 1:
                msgs.append(dict(type="image", value=next(images)))
        return msgs

    def evaluate(self, eval_file, **judge_kwargs):
        """The lm-eval task's metrics per sample (``<eval>_score.xlsx``) and their means
        (``<eval>_acc.csv``: n, exact_match, relaxed_match as fractions, like lm-eval). Exact
        matching only: a ``judge`` is not used."""
        utils = task_utils()
        data = load(eval_file)
        gold = {int(i): (a, json.loads(al)) for i, a, al in
                zip(self.data["index"], self.data["answer"], self.data["aliases"])}
        rows = []
        for idx, pred in zip(data["index"], data["prediction"]):
            pred = "" if pd.isna(pred) else str(pred)
            answer, aliases = gold[int(idx)]
            scores = utils.process_results({"answer": answer, "aliases": aliases}, [pred])
            rows.append({"index": int(idx), "answer": answer, "prediction": pred, **scores})
        per = pd.DataFrame(rows)
        suffix = eval_file.split(".")[-1]
        dump(per, eval_file.replace(f".{suffix}", "_score.xlsx"))
        acc = pd.DataFrame([{"split": "none", "n": len(per),
                             "exact_match": float(per["exact_match"].mean()) if len(per) else float("nan"),
                             "relaxed_match": float(per["relaxed_match"].mean()) if len(per) else float("nan")}])
        dump(acc, eval_file.replace(f".{suffix}", "_acc.csv"))
        return acc


class CoreProbeMCQDataset(_CoreProbeMixin, ImageMCQDataset):
    """Grid-needle probes as 4-option MCQ (``core_grid_needle_mc``): VLMEvalKit's MCQ prompt,
    answer extraction and ``report_acc`` (``<eval>_acc.csv``, overall and per ``category``)."""

    TYPE = "MCQ"
    _KIND = "mcq"
    _NAMES: set[str] = set()
