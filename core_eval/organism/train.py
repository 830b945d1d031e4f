"""Train the organism: a small LLaVA that really solves the probe tasks, on 2 CPU cores.

    python -m core_eval.organism.train --out DIR [--threads 2] [--steps N] [--minutes M]

Deterministic: every random choice comes from ``--seed`` (model init, tokenizer corpus, probe
seeds, batch order); the same torch version and thread count give the same weights.
Training probes use seeds >= 1_000_000 and validation 3_000_000, never the lm-eval tasks'
seed 1000 (held out for the final evaluation) nor ``core-eval score``'s default seed 0.

Architecture (standard ``LlavaForConditionalGeneration``, nothing routes retrieval through
chosen heads): CLIP vision tower on 64x64 px with 16 px patches, so a 448 px 4x4
grid_needle image gives one visual token per cell; 2-layer MLP projector; Llama LM
(6 layers x 8 heads, head_dim 16, MHA). Tokenizer (:mod:`core_eval.organism.tokenizer`):
byte-level BPE (any text tokenizes) whose merges are learnt from probe text, so probe words are
single tokens; ``tokenizer="v2"`` (default: whitespace its own token, so a key / value is the
same tokens in table, question and answer) or ``"v1"`` (the first organism's).

Optional stage 0 (``--set s0_steps=N``; :mod:`core_eval.organism.stage0`): the LM alone on
text-only associative recall (MQAR, the text table with every key asked, a text "which image
holds X") with a curriculum on N, before the two visual stages; ``s2_recall`` keeps a share of
it in stage 2.

Two stages, as real MLLMs are trained:

1. vision tower only: per-patch classification of the colour and the shape of the object in that
   patch (multi-image objects: every patch they cover >= 20% of; others: the centre's patch; or
   none), of a text-table cell's key letter and value digit, and of the patch's row and column,
   on grid_needle, count_control, multi_image_needle and text_table images, through throw-away
   linear heads (without the row/column targets the tower's outputs barely encode where a patch
   is, and the LM learnt cell addressing much more slowly);
2. vision tower frozen; projector + LM on task mixtures of 64 items per step, in phases
   (``phases``): the grid (54 grid_needle, 8 count_control, 2 multi_image_needle) until held-out
   grid accuracy reaches 0.85 or 1500 steps; the text table dominant (24 questions with 3 more
   turns each + 24 read-out items, :mod:`core_eval.organism.readout`) until it reaches 0.9; one
   phase per multi-image scene size (:data:`MI_CURRICULUM`: 24 questions + 24 read-outs of that
   size, until its accuracy or its cap); then all families together. Loss = cross-entropy on the
   answer tokens and the end-of-sequence token that follows them. Each family runs as its own
   sub-batch (little padding); one optimizer step per batch. The frozen tower's features are
   computed once per probe image (exactly what the model computes in its forward; checked
   against the real forward at the end).

Options for studying other recipes (``--set KEY=JSON``; :data:`V1_RECIPE` lists the first
organism's values): ``image_labels`` (the chat template writes ``Image k: <image>``, as
Qwen2-VL's ``Picture k:``), ``knobs`` (per-family knob overrides of the training probes),
``turns`` (further questions about the same images per training item, multi-turn, so every image
supervises several answers), ``"readout:<family>"`` entries of ``pool`` / ``batch`` (the images,
then ``readout_asks`` query/answer pairs back to back, associative recall over the visual
tokens), ``mi_variant`` (the scene sizes of the multi-image pool variants), ``s1_cover``,
``phases`` (with ``until``: end a phase on held-out accuracy), ``"<family>@<label>"`` pool entries
(a pool of their own with ``knobs["<family>@<label>"]``, validated on their own: a curriculum on
the multi-image scene size) and stage 0. What they did is in
the README's organism section and ``docs/organism_sweep.md``.

Output: ``save_pretrained`` model (float32 safetensors) + processor + generation config, and
``training_log.json`` (config, seeds, timings, losses, validation accuracy, final greedy exact
match per family on the lm-eval tasks' samples, chance levels).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core_eval.organism import ANSWER_INSTRUCTION, DESCRIPTION, TASK_KNOBS
from core_eval.organism.data import CHANCE, make_samples
from core_eval.organism.stage0 import S0_DEFAULTS
from core_eval.probes import KEY_LETTERS

# ----------------------------------------------------------------------------- configuration

IMAGE = 64         # processor output size (px)
PATCH = 16         # -> 4x4 = 16 visual tokens per image
N_VIS = (IMAGE // PATCH) ** 2

#: The multi-image scene sizes of the stage-2 curriculum (label -> (n_images, objects_per_image),
#: the held-out accuracy that ends its phase, the phase's step cap); the task's own 4x4 scenes
#: ("") come last. DEFAULTS["phases"] has one phase per entry, in this order.
MI_CURRICULUM = {"2x1": ((2, 1), 0.85, 500), "2x2": ((2, 2), 0.8, 450), "4x2": ((4, 2), 0.7, 500),
                 "": ((4, 4), 0.6, 650)}


def _mi_pool(label: str) -> str:
    """The pool entry of a curriculum scene size (``""``: the task's own scenes)."""
    return f"multi_image_needle@{label}" if label else "multi_image_needle"


#: The shipped weights' recipe (organism v2; the first organism's: :data:`V1_RECIPE`).
DEFAULTS = dict(
    seed=0,
    # model
    vision_hidden=128, vision_layers=2, vision_heads=4, vision_intermediate=256,
    lm_hidden=128, lm_layers=6, lm_heads=8, lm_intermediate=256, vocab_target=640,
    # "v2": whitespace is its own token, so a key / value is the same token sequence in table,
    # question and answer (core_eval/organism/tokenizer.py); "v1": the first organism's
    tokenizer="v2",
    # stage 1 (the text tables add key-letter / value-digit targets)
    s1_steps=800, s1_batch=64, s1_lr=2e-3, s1_position=True,
    s1_pool={"grid_needle": 1500, "count_control": 800, "multi_image_needle": 1500, "text_table": 600},
    # per family: label every patch an object covers >= this fraction of (default: the centre's);
    # multi-image objects straddle patches (docs/organism_sweep.md, session 5)
    s1_cover={"multi_image_needle": 0.2},
    # stage 2
    steps=4900, lr=2e-3, warmup=150, weight_decay=0.01, clip=1.0,
    # the mixture when "phases" is empty (the v1 recipe's)
    batch={"grid_needle": 54, "count_control": 8, "multi_image_needle": 2},
    # distinct samples per family ("readout:<family>": read-out items, core_eval/organism/readout.py)
    pool={"grid_needle": 16000, "count_control": 2000, "readout:count_control": 1000,
          "multi_image_needle": 3000, "readout:multi_image_needle": 4000, "text_table": 3000,
          "readout:text_table": 3000,
          # one pool per multi-image scene size of the curriculum (their knobs: "knobs")
          **{ro + _mi_pool(s): 1500 for s in MI_CURRICULUM if s for ro in ("", "readout:")}},
    styles=["plain", "lm_eval"],   # phrasings of the visual questions (see data.py)
    # share of each pool drawn with other knobs (see knob_variant); the ranges of multi-image
    # variants (small scenes first let "which image holds X" leave chance: docs/organism_sweep.md)
    mi_variant={"n_images": [2, 4], "objects_per_image": [1, 4]},
    varied_frac={"grid_needle": 0.3, "multi_image_needle": 0.5, "readout:multi_image_needle": 0.7,
                 "text_table": 0.5, "readout:text_table": 0.5},
    # The chat template writes "Image k: " before the k-th image (as Qwen2-VL's "Picture k:"): it
    # tells a visual token which image it is in; "which image holds X" left chance with it in the
    # scene-size curriculum (docs/organism_sweep.md, session 6)
    image_labels=True,
    # per-family knob overrides (over the lm-eval tasks' knobs, TASK_KNOBS) of the training and
    # validation probes; a "<family>@<label>" pool entry (e.g. one multi-image scene size) draws
    # knobs["<family>@<label>"] (see family_of; the final evaluation always uses TASK_KNOBS)
    knobs={_mi_pool(s): {"n_images": a, "objects_per_image": b}
           for s, ((a, b), _, _) in MI_CURRICULUM.items() if s},
    # further questions per training item about the same images (multi-turn, dense supervision)
    turns={"multi_image_needle": 3, "text_table": 3},
    # pairs per "readout:<family>" item of pool / batch (core_eval/organism/readout.py)
    readout_asks=8,
    # stage-2 mixtures in turn, [{"steps": n, "batch": {...}[, "until": {family: acc}]}, ...]
    # (empty: "batch" throughout); a phase ends after n steps or when its "until" is met. The
    # grid first, then the text table dominant until it has left chance, then multi-image on
    # growing scenes (2 images x 1 object -> 2x2 -> 4x2 -> the task's 4x4 mixture), then all together.
    phases=[
        {"steps": 1500, "batch": {"grid_needle": 54, "count_control": 8, "multi_image_needle": 2},
         "until": {"grid_needle": 0.85}},
        {"steps": 1000, "batch": {"text_table": 24, "readout:text_table": 24, "grid_needle": 12,
                                  "count_control": 4}, "until": {"text_table": 0.9}},
        *({"steps": cap, "batch": {_mi_pool(s): 24, "readout:" + _mi_pool(s): 24, "grid_needle": 10,
                                   "count_control": 4, "text_table": 2, "readout:text_table": 2},
           "until": {_mi_pool(s): u}}
          for s, (_, u, cap) in MI_CURRICULUM.items()),
        {"steps": 1, "batch": {"grid_needle": 36, "count_control": 12, "readout:count_control": 2,
                               "multi_image_needle": 8, "readout:multi_image_needle": 4, "text_table": 2,
                               "readout:text_table": 2}},
    ],
    val_n=100, val_every=100,   # validation also decides when a phase has met its "until"
    final_n=300,
    # stage 0 (text-only recall before the visual stages; off unless s0_steps > 0): stage0.py
    **S0_DEFAULTS,
    # stage-0 items per stage-2 batch, e.g. {"mqar": 16, "table": 2, "which": 2} (default none)
    s2_recall={},
)

#: The first organism's (v1) settings where they differ from :data:`DEFAULTS` (``--set`` each entry).
V1_RECIPE = {
    "tokenizer": "v1", "s1_steps": 300,
    "s1_pool": {"grid_needle": 1500, "count_control": 800, "multi_image_needle": 300},
    "s1_cover": {}, "steps": 3200,
    "pool": {"grid_needle": 16000, "count_control": 2000, "multi_image_needle": 2000, "text_needle": 5000},
    "mi_variant": {"n_images": [2, 3], "objects_per_image": [4, 4]},
    "varied_frac": {"grid_needle": 0.3, "multi_image_needle": 0.5, "text_needle": 0.5},
    "turns": {}, "phases": [], "val_n": 200, "val_every": 500, "final_n": 100,
}

TRAIN_SEED0, VAL_SEED, TOK_SEED = 1_000_000, 3_000_000, 5_000_000
#: torch threads of the shipped run (both cores of the 2-core CPU); ``--threads``' default
SHIPPED_THREADS = 2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- tokenizer / processor

def _corpus(c: dict) -> list[str]:
    """Text the BPE merges are learnt from: template pieces + probe questions and answers
    (image labels and the text table only when the recipe uses them)."""
    seed = c["seed"]
    # template pieces repeated so that they become single tokens
    texts = ["USER: ", "USER: <image>", " ASSISTANT:", "ASSISTANT:", ANSWER_INSTRUCTION] * 50
    if c["image_labels"]:
        texts += [f"Image {k}: <image>" for k in range(1, 9)] * 20
    fams = ["grid_needle", "count_control", "multi_image_needle", "text_needle"]
    if any(f.endswith("text_table") for f in c["pool"]):  # text_table or readout:text_table
        fams.append("text_table")
    n = 300
    for i, fam in enumerate(fams):
        for s in make_samples(fam, n, TOK_SEED + 10 * seed + i, style="lm_eval"):
            texts += [s.question, s.answer, *s.aliases]
    for s in make_samples("multi_image_needle", 100, TOK_SEED + 10 * seed + 7, style="plain",
                          knobs={**TASK_KNOBS["multi_image_needle"], "variant": "right_of"}):
        texts += [s.question, s.answer]
    return texts


def build_tokenizer(c: dict):
    """The organism's BPE tokenizer (pre-tokenization ``c["tokenizer"]``) learnt on the probe text."""
    from core_eval.organism.tokenizer import build_tokenizer as build

    return build(_corpus(c), vocab_size=c["vocab_target"], kind=c["tokenizer"],
                 image_labels=c["image_labels"])


def build_processor(tok):
    from transformers import CLIPImageProcessor, LlavaProcessor

    ip = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tok.chat_template)


def build_model(tok, c: dict):
    from transformers import (CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    vocab = -(-len(tok) // 64) * 64
    ids = tok.convert_tokens_to_ids
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=c["lm_hidden"], intermediate_size=c["lm_intermediate"],
        num_hidden_layers=c["lm_layers"], num_attention_heads=c["lm_heads"],
        num_key_value_heads=c["lm_heads"], head_dim=c["lm_hidden"] // c["lm_heads"],
        max_position_embeddings=1024, bos_token_id=ids("<s>"), eos_token_id=ids("</s>"),
        pad_token_id=ids("<pad>"), tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=c["vision_hidden"], intermediate_size=c["vision_intermediate"],
        num_hidden_layers=c["vision_layers"], num_attention_heads=c["vision_heads"],
        image_size=IMAGE, patch_size=PATCH, projection_dim=c["vision_hidden"],
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids("<image>"),
                         image_seq_length=N_VIS, vision_feature_select_strategy="default",
                         vision_feature_layer=-1, projector_hidden_act="gelu")
    for cfg in (config, text, vision):
        cfg.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c["seed"])
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids("<s>"), eos_token_id=ids("</s>"), pad_token_id=ids("<pad>"),
        do_sample=False, max_new_tokens=16,
    )
    return model


# ----------------------------------------------------------------------------- data

_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")


_DIGITS = "0123456789"
#: Stage-1 per-patch targets: name -> number of classes (the last class = nothing there).
PATCH_TARGETS = {"colour": len(_COLOURS) + 1, "shape": len(_SHAPES) + 1,
                 "key": len(KEY_LETTERS) + 1, "value": len(_DIGITS) + 1}


def patch_labels(sample, cover: float | None = None) -> list[dict[str, list[int]]]:
    """Per image, per target of :data:`PATCH_TARGETS`: the class of each visual token
    (row-major 4x4 patches): colour and shape of the object centred in that patch, key letter
    and value digit of the text-table cell in it; the last class = none. ``cover``: instead of
    the centre's patch, every patch the object covers at least this fraction of (objects that
    straddle patches, as the multi-image scenes' do, are then read wherever they are seen)."""
    g = IMAGE // PATCH
    fam, meta = sample.family, sample.meta
    none = {t: [n - 1] * (g * g) for t, n in PATCH_TARGETS.items()}
    if fam == "text_table":
        if meta["grid"] != g or meta["knobs"]["value_len"] != 1:
            raise ValueError("text-table patch labels need the 4x4 table of one-digit values")
        lab = {t: list(v) for t, v in none.items()}
        for r in meta["rows"]:
            p = r["cell"][0] * g + r["cell"][1]
            lab["key"][p], lab["value"][p] = KEY_LETTERS.index(r["key"]), _DIGITS.index(r["value"])
        return [lab]
    per_image: list[list[tuple[str, list]]] = []
    if fam == "grid_needle":
        k = meta["knobs"]
        if k["grid"] != g:
            raise ValueError("patch labels need the 4x4 grid")
        per_image = [[(t, None) for t in meta["cells"]]]
    elif fam == "count_control":
        per_image = [[(o["type"], o["box"]) for o in meta["objects"]]]
    elif fam == "multi_image_needle":
        per_image = [[(o["type"], o["box"]) for o in objs] for objs in meta["objects"]]
    else:
        raise ValueError(fam)
    out = []
    for m, objs in enumerate(per_image):
        lab = {t: list(v) for t, v in none.items()}
        W = sample.images[m].width
        for j, (t, box) in enumerate(objs):
            c, s = t.split(" ")
            if box is None:
                ps = [j]
            elif cover is None:
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                ps = [int(cy * g // W) * g + int(cx * g // W)]
            else:  # box overlap with each patch, as a fraction of the patch
                w = W / g
                ps = [r * g + q for r in range(g) for q in range(g)
                      if max(0.0, min(box[2], (q + 1) * w) - max(box[0], q * w))
                      * max(0.0, min(box[3], (r + 1) * w) - max(box[1], r * w)) >= cover * w * w]
            for p in ps:
                lab["colour"][p], lab["shape"][p] = _COLOURS.index(c), _SHAPES.index(s)
        out.append(lab)
    return out


def _pixels(processor, images) -> torch.Tensor:
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """What LLaVA feeds its projector: the selected tower layer, CLS dropped."""
    out = model.model.vision_tower(pixel_values.to(model.device), output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def knob_variant(family: str, rng: random.Random, mi_variant: dict | None = None) -> dict:
    """Other knob settings of ``family`` mixed into the training pool (easier and harder
    cases than the task's; the 4x4 grid / 448 px geometry is kept). ``mi_variant``: the
    inclusive ranges multi-image variants draw ``n_images`` / ``objects_per_image`` from
    (default ``DEFAULTS["mi_variant"]``)."""
    if family == "grid_needle":
        return {**TASK_KNOBS["grid_needle"], "n_distractor_types": rng.randint(1, 15),
                "confusable": rng.random() < 0.5}
    if family == "multi_image_needle":
        r = mi_variant or DEFAULTS["mi_variant"]
        lo, hi = r["objects_per_image"]  # a fixed count draws nothing (the v1 recipe's stream)
        return {**TASK_KNOBS["multi_image_needle"], "n_images": rng.randint(*r["n_images"]),
                "objects_per_image": lo if lo == hi else rng.randint(lo, hi)}
    if family == "text_needle":
        return {**TASK_KNOBS["text_needle"], "n_rows": rng.randint(2, 7)}
    if family == "text_table":  # fewer entries (down to 3), same 4x4 table
        return {**TASK_KNOBS["text_table"], "n_rows": rng.randint(3, 16), "table_side": 4}
    if family == "count_control":
        return dict(TASK_KNOBS["count_control"])
    raise ValueError(family)


@dataclass
class Item:
    ids: list[int]        # BOS + prompt + answer + EOS (+ further turns)
    feats: list[int]      # rows of the feature bank, one per image, in order
    family: str
    spans: list           # [start, end) of every answer + EOS, one per turn

    @property
    def n_prompt(self) -> int:
        """Index of the first answer token."""
        return self.spans[0][0]


class Pool:
    """Tokenized prompts (both phrasings) + a feature bank of the frozen vision tower."""

    def __init__(self):
        self.items: dict[str, list[tuple[Item, ...]]] = {}
        self.bank: list[torch.Tensor] = []
        self.n_feat = 0

    def add_features(self, feats: torch.Tensor) -> list[int]:
        self.bank.append(feats)
        idx = list(range(self.n_feat, self.n_feat + feats.shape[0]))
        self.n_feat += feats.shape[0]
        return idx

    def freeze(self):
        self.bank_t = torch.cat(self.bank) if self.bank else torch.zeros(0)
        self.bank = []


def encode_item(processor, sample, feats: list[int], more: list[tuple[str, str]] = ()) -> Item:
    """Token ids of the chat prompt (image placeholders expanded as the processor does) +
    answer + EOS, and where the answer starts. ``more``: further (question, answer) turns about
    the same images, each written ``USER: q ASSISTANT:a</s>`` as the template writes a turn."""
    from core_eval.prompting import prompt_text

    tok = processor.tokenizer
    text = prompt_text(processor, sample).replace("<image>", "<image>" * N_VIS)
    turns = [(text, sample.answer)] + [(f"USER: {q} ASSISTANT:", a) for q, a in more]
    spans, done = [], ""
    for prompt, answer in turns:
        p_ids = tok(done + prompt)["input_ids"]
        done = done + prompt + answer + tok.eos_token
        ids = tok(done)["input_ids"]
        if ids[:len(p_ids)] != p_ids:
            raise ValueError(f"{sample.id}: an answer does not start at a token boundary")
        spans.append((len(p_ids), len(ids)))
    return Item(ids=ids, feats=feats, family=sample.family, spans=spans)


def more_questions(sample, rng: random.Random, k: int) -> list[tuple[str, str]]:
    """Up to ``k`` further questions about the same images, in the probe's own wording, with
    their answers (dense supervision, as multi-turn instruction data): other cells of a grid,
    other keys of a text table, other objects that occur once among the images."""
    fam, meta, q = sample.family, sample.meta, sample.question.split("\n")[0]
    out = []
    if fam == "grid_needle":
        g = meta["knobs"]["grid"]
        r0, c0 = meta["cell"]
        here = f"row {r0 + 1}, column {c0 + 1}"
        for idx in rng.sample(range(g * g), min(k, g * g)):
            r, c = divmod(idx, g)
            if (r, c) != (r0, c0):
                out.append((q.replace(here, f"row {r + 1}, column {c + 1}"), meta["cells"][idx]))
    elif fam == "text_table":
        here = f"value of {meta['key']}?"
        rows = [r for r in meta["rows"] if r["key"] != meta["key"]]
        for r in rng.sample(rows, min(k, len(rows))):
            out.append((q.replace(here, f"value of {r['key']}?"), r["value"]))
    elif fam == "multi_image_needle" and meta["knobs"]["variant"] == "which_image":
        where: dict[str, list[int]] = {}
        for m, objs in enumerate(meta["objects"]):
            for o in objs:
                where.setdefault(o["type"], []).append(m)
        target = " ".join(meta["target"])
        once = [(t, ms[0]) for t, ms in sorted(where.items()) if len(ms) == 1 and t != target]
        for t, m in rng.sample(once, min(k, len(once))):
            out.append((q.replace(f"contains a {target}?", f"contains a {t}?"), str(m + 1)))
    return out[:k]


def family_of(key: str) -> str:
    """The probe family of a pool key: ``"readout:multi_image_needle@2x1"`` -> ``"multi_image_needle"``.

    ``"<family>@<label>"`` is a pool of its own with the knob overrides ``knobs["<family>@<label>"]``
    (e.g. one pool per multi-image scene size), validated on its own so a phase can end on it."""
    from core_eval.organism.readout import base_family

    return base_family(key).split("@")[0]


def knobs_for(knobs: dict, key: str) -> dict | None:
    """The probe knobs of pool key ``key``: its ``knobs`` entry (else its read-out's base, else its
    family's) over the lm-eval task's ``TASK_KNOBS``; ``None`` (the task's) when none is set."""
    from core_eval.organism.readout import base_family

    fam = family_of(key)
    over = knobs.get(key, knobs.get(base_family(key), knobs.get(fam)))
    return None if over is None else {**TASK_KNOBS[fam], **over}


def build_pool(model, processor, sizes: dict, seed0: int, *, varied_frac: dict, rng_seed: int,
               chunk: int = 200, styles=("plain", "lm_eval"), knobs: dict | None = None,
               turns: dict | None = None, readout_asks: int = 8, mi_variant: dict | None = None) -> Pool:
    """Tokenized items of each family (``turns[family]`` further questions per item, see
    :func:`more_questions`; a ``"readout:<family>"`` entry: read-out items of ``readout_asks``
    pairs, :mod:`core_eval.organism.readout`) and the tower features of their images."""
    from core_eval.organism.readout import PREFIX, encode_readout

    pool = Pool()
    rng = random.Random(rng_seed)
    trng = random.Random(rng_seed + 17)
    for f_i, (fam, n) in enumerate(sizes.items()):
        t0 = time.time()
        items: list[tuple[Item, ...]] = []
        for c_i, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            seed = seed0 + 1000 * f_i + c_i
            base_fam, is_readout = family_of(fam), fam.startswith(PREFIX)
            kn = knobs_for(knobs or {}, fam)
            if rng.random() < varied_frac.get(fam, 0.0):
                kn = knob_variant(base_fam, rng, mi_variant)
            # a read-out item ends with its images: the phrasing of the question does not enter it
            fam_styles = ("lm_eval",) if base_fam == "text_needle" else ("plain",) if is_readout else styles
            by_style = {st: make_samples(base_fam, m, seed, style=st, knobs=kn) for st in fam_styles}
            base = by_style[fam_styles[0]]
            ims = [im for s in base for im in s.images]
            fidx: list[int] = []
            if ims:
                with torch.no_grad():
                    fidx = pool.add_features(vision_features(model, _pixels(processor, ims)))
            pos = 0
            for j in range(m):
                k = len(base[j].images)
                fi, pos = fidx[pos:pos + k], pos + k
                if is_readout:
                    it = encode_readout(processor, base[j], fi, trng, readout_asks)
                    it.family = fam
                    items.append((it,))
                    continue
                more = more_questions(base[j], trng, (turns or {}).get(fam, (turns or {}).get(base_fam, 0)))
                items.append(tuple(encode_item(processor, by_style[st][j], fi, more) for st in fam_styles))
        pool.items[fam] = items
        log(f"  pool {fam}: {n} samples in {time.time() - t0:.1f}s")
    pool.freeze()
    return pool


# ----------------------------------------------------------------------------- stage 1

def stage1(model, processor, c: dict, rec: dict) -> None:
    # glyph targets only when text tables are among the images
    targets = {t: n for t, n in PATCH_TARGETS.items()
               if t in ("colour", "shape") or "text_table" in c["s1_pool"]}
    log(f"stage 1: vision tower on per-patch {' / '.join(targets)} / position classification")
    t0 = time.time()
    tower = model.model.vision_tower
    d = c["vision_hidden"]
    gen = torch.Generator().manual_seed(c["seed"] + 1)
    g = IMAGE // PATCH
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c["seed"] + 2)
        heads = torch.nn.ModuleDict({t: torch.nn.Linear(d, n) for t, n in targets.items()})
        head_p = torch.nn.Linear(d, 2 * g)   # row and column of the patch
    dev = model.device
    heads.to(dev)
    head_p.to(dev)
    row_t = (torch.arange(g * g) // g).to(dev)
    col_t = (torch.arange(g * g) % g).to(dev)
    pix, labels = [], {t: [] for t in targets}
    for f_i, (fam, n) in enumerate(c["s1_pool"].items()):
        for start in range(0, n, 200):
            ss = make_samples(family_of(fam), min(200, n - start), TRAIN_SEED0 + 500_000 + 1000 * f_i + start,
                              style="plain", knobs=knobs_for(c["knobs"], fam))
            pix.append(_pixels(processor, [im for s in ss for im in s.images]))
            for s in ss:
                for lab in patch_labels(s, c["s1_cover"].get(fam)):
                    for t in targets:
                        labels[t].append(lab[t])
    pix_t = torch.cat(pix)
    lab_t = {t: torch.tensor(v) for t, v in labels.items()}
    log(f"  {len(pix_t)} images in {time.time() - t0:.1f}s")
    params = [*tower.parameters(), *heads.parameters(), *head_p.parameters()]
    opt = torch.optim.AdamW(params, lr=c["s1_lr"], weight_decay=0.0)
    n_val = min(256, len(pix_t) // 4)   # held-out images (the first family's) for the accuracy
    val_idx, tr_idx = torch.arange(n_val), torch.arange(n_val, len(pix_t))
    losses = []
    tower.train()
    for step in range(c["s1_steps"]):
        lr = c["s1_lr"] * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / c["s1_steps"]))
        for grp in opt.param_groups:
            grp["lr"] = lr
        b = tr_idx[torch.randint(len(tr_idx), (c["s1_batch"],), generator=gen)]
        h = vision_features(model, pix_t[b])
        pos = head_p(h)
        loss = sum(F.cross_entropy(heads[t](h).flatten(0, 1), lab_t[t][b].flatten().to(dev))
                   for t in targets)
        if c["s1_position"]:
            B = len(b)
            loss = loss + F.cross_entropy(pos[..., :g].flatten(0, 1), row_t.repeat(B)) + \
                F.cross_entropy(pos[..., g:].flatten(0, 1), col_t.repeat(B))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
        if step % 50 == 0 or step == c["s1_steps"] - 1:
            log(f"  s1 step {step} loss {loss.item():.4f}")
    tower.eval()
    def occupied_acc(h, y: dict) -> dict:
        """Per target: accuracy on the patches that hold something of its kind (``None``: no such patch)."""
        out = {}
        for t, n in targets.items():
            present = y[t] != n - 1
            pred = heads[t](h).argmax(-1).cpu()
            out[t] = round((pred[present] == y[t][present]).float().mean().item(), 4) if present.any() else None
        return out

    with torch.no_grad():
        acc = occupied_acc(vision_features(model, pix_t[val_idx]), {t: lab_t[t][val_idx] for t in targets})
        # per family, on fresh images (seeds training never drew): the split above holds the first family only
        by_family = {}
        for f_i, fam in enumerate(c["s1_pool"]):
            ss = make_samples(family_of(fam), 16, VAL_SEED + 500_000 + 1000 * f_i, style="plain", knobs=knobs_for(c["knobs"], fam))
            h = vision_features(model, _pixels(processor, [im for s in ss for im in s.images]).to(dev))
            labs = [lab for s in ss for lab in patch_labels(s, c["s1_cover"].get(fam))]
            fam_acc = occupied_acc(h, {t: torch.tensor([lab[t] for lab in labs]) for t in targets})
            by_family[fam] = {t: a for t, a in fam_acc.items() if a is not None}
    log(f"  stage 1 done in {time.time() - t0:.1f}s: held-out accuracy on occupied patches {acc}, "
        f"per family on fresh images {by_family}")
    rec["stage1"] = {"seconds": round(time.time() - t0, 1), "images": len(pix_t),
                     "steps": c["s1_steps"], "loss_every_10": losses[::10],
                     "val_patch_acc_occupied": acc, "fresh_patch_acc_by_family": by_family}


# ----------------------------------------------------------------------------- stage 2

def collate(items: list[Item], bank: torch.Tensor, pad_id: int):
    T = max(len(it.ids) for it in items)
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    tgt = torch.full((B, T), -100, dtype=torch.long)   # tgt[b, t] = token predicted at row t
    feats = []
    for b, it in enumerate(items):
        n = len(it.ids)
        ids[b, :n] = torch.tensor(it.ids)
        mask[b, :n] = 1
        for s0, s1 in it.spans:
            tgt[b, s0 - 1:s1 - 1] = ids[b, s0:s1]
        feats.extend(it.feats)
    f = bank[torch.tensor(feats, device=bank.device)] if feats else None
    dev = bank.device
    return ids.to(dev), mask.to(dev), tgt.to(dev), f


def forward_hidden(model, ids, mask, feats):
    """LlavaModel's forward with precomputed tower features: embed, scatter the projected
    image features into the image-token positions, run the LM."""
    emb = model.get_input_embeddings()(ids)
    if feats is not None:
        img = model.model.multi_modal_projector(feats).reshape(-1, emb.shape[-1])
        pos = (ids == model.config.image_token_index).unsqueeze(-1).expand_as(emb)
        emb = emb.masked_scatter(pos, img.to(emb.dtype))
    out = model.model.language_model(inputs_embeds=emb, attention_mask=mask)
    return out.last_hidden_state


def loss_and_acc(model, ids, mask, tgt, feats, *, reduction: str = "mean"):
    h = forward_hidden(model, ids, mask, feats)
    sel = tgt != -100
    logits = model.lm_head(h[sel])
    loss = F.cross_entropy(logits, tgt[sel], reduction=reduction)
    pred = torch.full_like(tgt, -100)
    pred[sel] = logits.argmax(-1)
    ok = ((pred == tgt) | ~sel).all(dim=1)
    return loss, ok


@torch.no_grad()
def validate(model, val: Pool, pad_id: int) -> dict:
    model.eval()
    res = {}
    for fam, items in val.items.items():
        oks = []
        for style_i in range(len(items[0])):
            for i in range(0, len(items), 100):
                batch = [t[style_i] for t in items[i:i + 100]]
                _, ok = loss_and_acc(model, *collate(batch, val.bank_t, pad_id))
                oks.append(ok)
        res[fam] = round(torch.cat(oks).float().mean().item(), 4)
    model.train()
    return res


def stage2(model, processor, c: dict, rec: dict, deadline: float) -> None:
    log("stage 2: projector + LM on the task mixture (vision tower frozen)")
    t0 = time.time()
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    model.model.vision_tower.eval()
    pool = build_pool(model, processor, c["pool"], TRAIN_SEED0, varied_frac=c["varied_frac"],
                      rng_seed=c["seed"] + 3, styles=tuple(c["styles"]), knobs=c["knobs"], turns=c["turns"],
                      readout_asks=c["readout_asks"], mi_variant=c["mi_variant"])
    val = build_pool(model, processor, {f: c["val_n"] for f in c["pool"]}, VAL_SEED,
                     varied_frac={}, rng_seed=c["seed"] + 4, knobs=c["knobs"], readout_asks=c["readout_asks"])
    rec["stage2_data_seconds"] = round(time.time() - t0, 1)
    pad_id = processor.tokenizer.pad_token_id
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=c["lr"], betas=(0.9, 0.98))
    rng = random.Random(c["seed"] + 5)
    recall = None
    if any(c["s2_recall"].values()):
        from core_eval.organism.stage0 import Stage0Data

        recall = Stage0Data(processor, {**c, "s0_batch": c["s2_recall"], "seed": c["seed"] + 6})
    orders = {f: [] for f in c["pool"]}

    def draw(fam, k):
        out = []
        while len(out) < k:
            if not orders[fam]:
                orders[fam] = list(range(len(pool.items[fam])))
                rng.shuffle(orders[fam])
            variants = pool.items[fam][orders[fam].pop()]
            out.append(variants[rng.randrange(len(variants))])
        return out

    hist, vals = [], []
    model.train()
    t_train = time.time()
    steps = c["steps"]
    mixture = Mixture(c)
    done, shown = 0, -1
    for step in range(steps):
        if time.time() > deadline:
            log(f"  time budget reached at step {step}: stopping stage 2 early")
            rec["stopped_early_at_step"] = step
            break
        warm = min(1.0, (step + 1) / c["warmup"])
        lr = c["lr"] * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        # one sub-batch per family (little padding), one optimizer step on the summed loss
        batch = mixture(step)
        if mixture.i != shown:
            log(f"  step {step}: mixture {batch}")
            shown = mixture.i
        groups = [draw(fam, k) for fam, k in batch.items()]
        if recall is not None:  # a share of stage-0 text recall at its last level
            groups += list(recall.batch(c["s0_levels"][-1]).values())
        n_tok = sum(e - s for g in groups for it in g for s, e in it.spans)  # answer tokens
        loss, oks = 0.0, []
        for g in groups:
            l_sum, ok = loss_and_acc(model, *collate(g, pool.bank_t, pad_id), reduction="sum")
            loss = loss + l_sum / n_tok
            oks.append(ok)
        ok = torch.cat(oks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c["clip"])
        opt.step()
        hist.append(loss.item())
        done = step + 1
        if step % 50 == 0:
            el = time.time() - t_train
            log(f"  step {step} loss {sum(hist[-50:]) / len(hist[-50:]):.4f} lr {lr:.2e} "
                f"batch-acc {ok.float().mean().item():.3f} ({el / (step + 1):.3f} s/step)")
        if (step + 1) % c["val_every"] == 0 or step + 1 == steps:
            v = validate(model, val, pad_id)
            vals.append({"step": step + 1, "seconds": round(time.time() - t_train, 1), **v})
            log(f"  val (teacher-forced exact) @ {step + 1}: {v}")
            mixture.observe(step + 1, v)
    rec["stage2"] = {
        "seconds": round(time.time() - t_train, 1), "steps_done": done,
        "s_per_step": round((time.time() - t_train) / max(1, done), 4),
        "loss_mean_per_100": [round(sum(hist[i:i + 100]) / len(hist[i:i + 100]), 4)
                              for i in range(0, len(hist), 100)],
        "val": vals, "recall_batches": recall.calls if recall is not None else 0,
        "phase_ends": mixture.ends,
    }
    if done and (not vals or vals[-1]["step"] != done):
        v = validate(model, val, pad_id)
        vals.append({"step": done, "seconds": round(time.time() - t_train, 1), **v})
    # the precomputed-feature forward must be the model's own forward
    check = make_samples("grid_needle", 2, VAL_SEED + 77, style="lm_eval")
    rec["stage2"]["forward_check_max_abs_diff"] = _forward_check(model, processor, check)


@torch.no_grad()
def _forward_check(model, processor, samples) -> float:
    from core_eval.prompting import encode

    model.eval()
    inputs = encode(processor, samples, with_answer=True, padding_side="right").to(model.device)
    ref = model(**inputs).logits
    feats = vision_features(model, inputs["pixel_values"])
    h = forward_hidden(model, inputs["input_ids"], inputs["attention_mask"], feats)
    diff = (model.lm_head(h) - ref).abs().max().item()
    if diff > 1e-3:
        raise AssertionError(f"precomputed-feature forward differs from the model's: {diff}")
    return diff


# ----------------------------------------------------------------------------- main

class Mixture:
    """The stage-2 mixture of each step: ``c["batch"]`` throughout, or the phases of ``c["phases"]`` in turn
    (``{"steps": n, "batch": {...}, "until": {family: accuracy}}``; the last one lasts to the end). A phase
    ends after ``steps`` steps, or earlier at the first validation where every family of its ``until`` has
    reached its held-out accuracy: a family can dominate the batch until it has left chance (when that
    happens varies by hundreds of steps with the samples drawn), then make room for the next."""

    def __init__(self, c: dict):
        self.phases = c["phases"] or [{"steps": c["steps"], "batch": c["batch"]}]
        self.i, self.start = 0, 0
        self.ends: list[dict] = []   # where each finished phase ended, and why

    def _next(self, step: int, why: str) -> None:
        self.ends.append({"phase": self.i, "ended_at_step": step, "why": why})
        log(f"  phase {self.i} ends at step {step} ({why})")
        self.i, self.start = self.i + 1, step

    def __call__(self, step: int) -> dict:
        if self.i < len(self.phases) - 1 and step - self.start >= self.phases[self.i]["steps"]:
            self._next(step, "steps")
        return self.phases[self.i]["batch"]

    def observe(self, step: int, val: dict) -> None:
        """Validation accuracy after ``step`` steps: ends the phase when its ``until`` is met."""
        until = self.phases[self.i].get("until")
        if self.i < len(self.phases) - 1 and until and all(val[f] >= a for f, a in until.items()):
            self._next(step, f"until {until} met: {({f: val[f] for f in until})}")


def check_config(c: dict) -> None:
    """Refuse a mixture that cannot run, before any work: every ``batch`` (or ``phases``) family needs a ``pool``,
    every pool family must be one the organism knows (read-outs: of a family that has them)."""
    from core_eval.organism.data import FAMILIES
    from core_eval.organism.readout import PREFIX, READOUT_FAMILIES, base_family

    for f in c["pool"]:
        fam = family_of(f)
        if fam not in FAMILIES or (f.startswith(PREFIX) and fam not in READOUT_FAMILIES):
            raise ValueError(f"pool family {f!r} is unknown; known: {list(FAMILIES)} and "
                             f"{['readout:' + r for r in READOUT_FAMILIES]} (each optionally '@<label>')")
        if "@" in f and base_family(f) not in c["knobs"]:
            raise ValueError(f"pool entry {f!r} is a labelled pool, but knobs has no {base_family(f)!r} entry "
                             f"(its probes' knob overrides), e.g. --set 'knobs={{\"{base_family(f)}\": "
                             f"{{\"n_images\": 2}}}}'")
        if "@" in f:  # the generator's own checks of the knobs, before any work
            try:
                make_samples(fam, 1, 0, knobs=knobs_for(c["knobs"], f))
            except (TypeError, ValueError) as e:
                raise ValueError(f"knobs[{base_family(f)!r}] (pool entry {f!r}): {e}") from None
    used = {n for f in [*c["pool"], *c["s1_pool"]] for n in (f, base_family(f), family_of(f))}  # knobs_for
    # (a default entry a replaced pool no longer uses is not the caller's: only refuse entries they set)
    unused = [k for k in c["knobs"] if k not in used and c["knobs"][k] != DEFAULTS["knobs"].get(k)]
    if unused:
        raise ValueError(f"knobs entries {unused} name no pool or s1_pool entry: nothing would use them")
    for i, p in enumerate(c["phases"]):
        if (not {"steps", "batch"} <= set(p) <= {"steps", "batch", "until"} or not isinstance(p["steps"], int)
                or p["steps"] < 1):
            raise ValueError(f"phases[{i}] must be {{\"steps\": n >= 1, \"batch\": {{family: items}}"
                             f"[, \"until\": {{family: accuracy}}]}}, got {p}")
        unknown = [f for f in p.get("until", {}) if f not in c["pool"]]
        if unknown:  # validation reports the pool's families only
            raise ValueError(f"phases[{i}] until families {unknown} have no pool entry (nothing validates them)")
    mixtures = ([(f"phases[{i}]", p["batch"]) for i, p in enumerate(c["phases"])] if c["phases"]
                else [("batch", c["batch"])])  # phases replace batch
    for where, batch in mixtures:
        missing = [f for f in batch if f not in c["pool"]]
        if missing:
            raise ValueError(f"{where} families {missing} have no pool entry; add them to --set pool=...")


def train(out: Path, c: dict, *, threads: int, minutes: float, device: str = "cpu") -> dict:
    """Train and save the organism (see the module docstring); returns the training log. The caller's
    torch thread count and deterministic-algorithms mode are restored afterwards."""
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(out, c, threads=threads, minutes=minutes, device=device)
    finally:
        torch.set_num_threads(state[0])
        torch.use_deterministic_algorithms(state[1], warn_only=state[2])


def _train(out: Path, c: dict, *, threads: int, minutes: float, device: str) -> dict:
    from core_eval.organism.evaluate import evaluate, load

    check_config(c)

    torch.set_num_threads(threads)
    if device.startswith("cuda"):  # deterministic cuBLAS; some CUDA kernels only warn
        import os
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
    t_start = time.time()
    deadline = t_start + 60 * minutes
    random.seed(c["seed"])
    torch.manual_seed(c["seed"])
    rec: dict = {"description": DESCRIPTION, "config": c, "threads": threads, "device": device,
                 "torch": torch.__version__, "python": platform.python_version()}
    import transformers
    rec["transformers"] = transformers.__version__

    tok = build_tokenizer(c)
    processor = build_processor(tok)
    model = build_model(tok, c).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tok)}")
    rec["n_params"] = n_params
    rec["vocab"] = len(tok)

    with torch.enable_grad():  # whatever the caller's grad mode
        if c["s0_steps"]:
            from core_eval.organism.stage0 import stage0

            stage0(model, processor, c, rec, deadline)
        stage1(model, processor, c, rec)
        stage2(model, processor, c, rec, deadline)
    rec["train_seconds"] = round(time.time() - t_start, 1)
    log(f"training done in {rec['train_seconds']:.0f}s")

    out.mkdir(parents=True, exist_ok=True)
    model.eval().to("cpu")
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out)
    processor.save_pretrained(out)

    # final evaluation, from disk, on the lm-eval tasks' own samples (seed 1000)
    t = time.time()
    m2, p2 = load(out)
    res = evaluate(m2, p2, n=c["final_n"], seed=1000)
    rec["final_eval"] = {k: {kk: v[kk] for kk in ("exact_match", "chance", "n", "seed", "examples")}
                         for k, v in res.items()}
    rec["final_eval_seconds"] = round(time.time() - t, 1)
    rec["chance"] = {k: {"exact_match": v[0], "how": v[1]} for k, v in CHANCE.items()}
    rec["total_seconds"] = round(time.time() - t_start, 1)
    rec["weights_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    for k, v in res.items():
        log(f"  {k:30s} exact_match {v['exact_match']:.3f} (chance {v['chance']:.3f})")
    (out / "training_log.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train the core-eval organism (a small LLaVA).")
    ap.add_argument("--out", required=True, help="output checkpoint directory")
    ap.add_argument("--threads", type=int, default=SHIPPED_THREADS,
                    help=f"torch threads (default {SHIPPED_THREADS}, the shipped weights'; other counts "
                         "change the reductions and so give other weights)")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default; the shipped weights) or cuda: same recipe, other weights")
    ap.add_argument("--minutes", type=float, default=150.0,
                    help="wall-clock budget (default 150, well above the default recipe's hour); stage 2 "
                         "stops early when it is spent (logged: other weights than the shipped ones)")
    ap.add_argument("--steps", type=int, default=None, help="stage-2 steps (default %d)" % DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a config entry, e.g. --set lm_layers=6")
    a = ap.parse_args(argv)
    c = json.loads(json.dumps(DEFAULTS))
    if a.steps is not None:
        c["steps"] = a.steps
    if a.seed is not None:
        c["seed"] = a.seed
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in c:
            raise SystemExit(f"unknown config key {k!r}; known: {sorted(c)}")
        c[k] = json.loads(v)
    train(Path(a.out), c, threads=a.threads, minutes=a.minutes, device=a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
