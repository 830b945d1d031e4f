"""Stage 0: text-only associative recall for the organism's LM, before the visual stages.

Content-addressed retrieval (text table, "which image holds X") needs an induction-style
circuit (previous-token head, then match-and-copy head) that forms after a long flat stretch of
the loss; it forms sooner with many recall targets per step. Three generators, all with loss on
every answer:

- ``mqar``: multi-query associative recall (Zoology, Arora et al. 2023) on the organism's own
  token ids: ``BOS k1 v1 ... kN vN q1 a1 ... q2N a2N`` with distinct keys, values from
  ``s0_values`` token types, 2N queries drawn from the N keys; fresh sequences every step;
- ``table``: the text-table page of ``text_lookup`` (``RECORD SHEET`` + ``K: V`` lines, as
  ``text_needle``), every key asked, one turn each (multi-turn, answer + EOS supervised);
- ``which``: a text version of "which image holds X": the objects of N scenes listed as text
  (``Image k: red circle, ...``), then "Which image contains a <type>?" for every type that
  occurs once, one turn each.

A curriculum on N (``s0_levels``, 2 -> 4 -> 8 -> 16) advances when every family's held-out
per-answer accuracy (teacher forced, all answer tokens right) reaches ``s0_advance``. AdamW,
betas (0.9, 0.98), linear warmup then constant learning rate. Deterministic for a given seed,
torch version and thread count.

    python -m core_eval.organism.stage0 --out curves.json [--set s0_values=64 ...]

runs stage 0 alone on a freshly built organism and writes the learning curves (the sweep of
``docs/organism_sweep.md``); ``train.py --set s0_steps=N`` runs it before stage 1.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F

#: Stage-0 options (merged into train.py's config; ``s0_steps=0`` = no stage 0).
S0_DEFAULTS = dict(
    s0_steps=0, s0_lr=2e-3, s0_warmup=50, s0_weight_decay=0.01, s0_clip=1.0,
    s0_batch={"mqar": 64, "table": 4, "which": 4},
    s0_levels=[2, 4, 8, 16], s0_advance=0.9, s0_eval_every=50, s0_val_n=64,
    s0_keys=64, s0_values=256,
    s0_minutes=0,   # wall-clock cap of stage 0 alone (0: only the run's own budget)
)

S0_TRAIN_SEED, S0_VAL_SEED = 7_000_000, 8_000_000


def recall_vocab(tok, n_keys: int, n_values: int) -> tuple[list[int], list[int]]:
    """Disjoint key and value token ids for MQAR: the tokenizer's non-special, non-whitespace
    tokens in id order, the first ``n_keys`` as keys and the next ``n_values`` as values."""
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special and tok.decode([i]).strip()]
    if n_keys + n_values > len(ids):
        raise ValueError(f"{n_keys} keys + {n_values} values > the {len(ids)} usable tokens")
    return ids[:n_keys], ids[n_keys:n_keys + n_values]


def mqar_items(rng: random.Random, n: int, N: int, keys: list[int], values: list[int], bos: int):
    """``n`` MQAR sequences of N pairs and 2N queries; every queried value is a target span."""
    from core_eval.organism.train import Item

    if N > len(keys):
        raise ValueError(f"N={N} pairs need >= {N} key tokens, have {len(keys)}")
    out = []
    for _ in range(n):
        ks = rng.sample(keys, N)
        vs = [rng.choice(values) for _ in ks]
        ids = [bos] + [t for kv in zip(ks, vs) for t in kv]
        spans = []
        for _ in range(2 * N):
            j = rng.randrange(N)
            ids += [ks[j], vs[j]]
            spans.append((len(ids) - 1, len(ids)))
        out.append(Item(ids=ids, feats=[], family="mqar", spans=spans))
    return out


def table_samples(N: int, n: int, seed: int, rng: random.Random):
    """``n`` text-table pages of N entries, every key asked: (sample, further turns). Even
    seeds: ``text_needle`` pages (4-character codes); odd seeds: the entries of
    ``core_text_lookup_table`` tables (one-digit values) written as the same page."""
    from core_eval.organism import TASK_KNOBS
    from core_eval.organism.data import Prompted, make_samples, text_page

    fam = "text_table" if seed % 2 else "text_needle"
    knobs = {**TASK_KNOBS[fam], "n_rows": min(N, 9 if seed % 2 else 12)}
    out = []
    for s in make_samples(fam, n, seed, style="plain", knobs=knobs):
        q = s.question.split("\n\n")[-1]
        here = f"value of {s.meta['key']}?"
        rows = [r for r in s.meta["rows"] if r["key"] != s.meta["key"]]
        rng.shuffle(rows)
        page = Prompted(id=s.id, images=[], question=f"{text_page(s.meta['rows'])}\n\n{q}",
                        answer=s.answer, family="table", meta=s.meta)
        out.append((page, [(q.replace(here, f"value of {r['key']}?"), r["value"]) for r in rows]))
    return out


def which_samples(N: int, n: int, seed: int, rng: random.Random):
    """``n`` text versions of multi_image_needle (which_image) at size N (2 images x 1 object
    for N=2 up to the task's 4 x 4 at N=16), the scenes listed as text, every type that occurs
    once asked: (sample, further turns)."""
    from core_eval.organism import TASK_KNOBS
    from core_eval.organism.data import Prompted, make_samples

    n_img = min(4, max(2, N // 2))
    knobs = {**TASK_KNOBS["multi_image_needle"], "n_images": n_img,
             "objects_per_image": max(1, min(4, N // n_img)), "n_distractor_types": min(41, 2 * N)}
    out = []
    for s in make_samples("multi_image_needle", n, seed, style="plain", knobs=knobs):
        scenes = "\n".join(f"Image {m + 1}: " + ", ".join(o["type"] for o in objs)
                           for m, objs in enumerate(s.meta["objects"]))
        where: dict[str, list[int]] = {}
        for m, objs in enumerate(s.meta["objects"]):
            for o in objs:
                where.setdefault(o["type"], []).append(m)
        target = " ".join(s.meta["target"])
        once = [(t, ms[0]) for t, ms in sorted(where.items()) if len(ms) == 1 and t != target]
        rng.shuffle(once)
        more = [(s.question.replace(f"contains a {target}?", f"contains a {t}?"), str(m + 1))
                for t, m in once]
        text = Prompted(id=s.id, images=[], question=f"{scenes}\n\n{s.question}", answer=s.answer,
                        family="which", meta=s.meta)
        out.append((text, more))
    return out


def text_items(processor, family: str, N: int, n: int, seed: int, rng: random.Random):
    """Tokenized multi-turn items of ``family`` ("table" or "which") at size N."""
    from core_eval.organism.train import encode_item

    make = table_samples if family == "table" else which_samples
    items = []
    for s, more in make(N, n, seed, rng):
        it = encode_item(processor, s, [], more)
        it.family = family
        items.append(it)
    return items


class Stage0Data:
    """Training batches and fixed held-out sets of every stage-0 family at a level N."""

    def __init__(self, processor, c: dict):
        self.processor = processor
        self.c = c
        tok = processor.tokenizer
        self.bos = tok.bos_token_id
        self.keys, self.values = recall_vocab(tok, c["s0_keys"], c["s0_values"])
        self.rng = random.Random(c["seed"] + 11)
        self.calls = 0
        self._val: dict[int, dict] = {}

    def _make(self, fam: str, N: int, n: int, seed: int, rng: random.Random):
        if fam == "mqar":
            return mqar_items(rng, n, N, self.keys, self.values, self.bos)
        return text_items(self.processor, fam, N, n, seed, rng)

    def batch(self, N: int) -> dict[str, list]:
        """Fresh training items of every family (sizes ``s0_batch``)."""
        self.calls += 1
        seed = S0_TRAIN_SEED + 1000 * self.c["seed"] + self.calls
        return {f: self._make(f, N, k, seed, self.rng) for f, k in self.c["s0_batch"].items() if k}

    def val(self, N: int) -> dict[str, list]:
        """Held-out items at level N (same every call; seeds disjoint from training's)."""
        if N not in self._val:
            rng, n, seed = random.Random(S0_VAL_SEED + N), self.c["s0_val_n"], S0_VAL_SEED + 2 * N
            # two seeds: both table kinds (see table_samples)
            self._val[N] = {f: self._make(f, N, n // 2, seed, rng) + self._make(f, N, n - n // 2, seed + 1, rng)
                            for f, k in self.c["s0_batch"].items() if k}
        return self._val[N]


def answer_hits(model, items, pad_id: int) -> tuple[torch.Tensor, list[bool]]:
    """Summed cross-entropy over the answer tokens and, per answer span, whether every token of
    it is the argmax (teacher forced)."""
    from core_eval.organism.train import collate, forward_hidden

    ids, mask, tgt, _ = collate(items, torch.zeros(0), pad_id)
    h = forward_hidden(model, ids, mask, None)
    sel = tgt != -100
    logits = model.lm_head(h[sel])
    loss = F.cross_entropy(logits, tgt[sel], reduction="sum")
    good = torch.zeros_like(tgt, dtype=torch.bool)
    good[sel] = logits.argmax(-1) == tgt[sel]
    good = good.tolist()
    hits = [all(good[b][s0 - 1:s1 - 1]) for b, it in enumerate(items) for s0, s1 in it.spans]
    return loss, hits


@torch.no_grad()
def evaluate_level(model, data: Stage0Data, N: int, pad_id: int) -> dict[str, float]:
    """Held-out per-answer accuracy of every family at level N."""
    model.eval()
    res = {}
    for fam, items in data.val(N).items():
        hits = []
        for i in range(0, len(items), 32):
            hits += answer_hits(model, items[i:i + 32], pad_id)[1]
        res[fam] = round(sum(hits) / len(hits), 4)
    model.train()
    return res


@torch.enable_grad()  # training never depends on the caller's grad mode (a caller may have turned it off)
def stage0(model, processor, c: dict, rec: dict, deadline: float | None = None) -> None:
    """Train the LM (embeddings, layers, head; not the vision side) on text recall with the
    N curriculum; learning curves go to ``rec["stage0"]``."""
    from core_eval.organism.train import log

    t0 = time.time()
    if c["s0_minutes"]:
        own = t0 + 60 * c["s0_minutes"]
        deadline = own if deadline is None else min(deadline, own)
    lm = [*model.model.language_model.parameters(), *model.lm_head.parameters()]
    decay = [p for p in lm if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["s0_weight_decay"]},
                             {"params": [p for p in lm if p.ndim < 2], "weight_decay": 0.0}],
                            lr=c["s0_lr"], betas=(0.9, 0.98))
    data = Stage0Data(processor, c)
    pad_id = processor.tokenizer.pad_token_id
    levels, level = c["s0_levels"], 0
    curve, advanced, losses = [], [], []
    log(f"stage 0: text recall, levels {levels}, batch {c['s0_batch']}")
    model.train()
    done = 0
    for step in range(c["s0_steps"]):
        if deadline is not None and time.time() > deadline:
            log(f"  stage 0 time budget reached at step {step}")
            break
        lr = c["s0_lr"] * min(1.0, (step + 1) / c["s0_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        groups = data.batch(levels[level])
        n_tok = sum(e - s for items in groups.values() for it in items for s, e in it.spans)
        loss = sum(answer_hits(model, items, pad_id)[0] for items in groups.values()) / n_tok
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm, c["s0_clip"])
        opt.step()
        done = step + 1
        losses.append(loss.item())
        if (step + 1) % c["s0_eval_every"] == 0:
            acc = evaluate_level(model, data, levels[level], pad_id)
            curve.append({"step": step + 1, "N": levels[level], "seconds": round(time.time() - t0, 1),
                          "loss": round(sum(losses[-c["s0_eval_every"]:]) / c["s0_eval_every"], 4),
                          "acc": acc})
            log(f"  s0 step {step + 1} N={levels[level]} loss {curve[-1]['loss']:.4f} held-out {acc}")
            if min(acc.values()) >= c["s0_advance"]:
                advanced.append({"N": levels[level], "step": step + 1})
                if level + 1 == len(levels):
                    log(f"  stage 0: last level passed at step {step + 1}")
                    break
                level += 1
    rec["stage0"] = {"seconds": round(time.time() - t0, 1), "steps_done": done,
                     "passed": advanced, "curve": curve}


def sweep_table(runs: dict[str, dict]) -> str:
    """Markdown table of stage-0 runs (name -> the JSON :func:`main` writes): the step at which
    each level N passed, the last held-out accuracies, steps and seconds."""
    levels = sorted({n for r in runs.values() for n in r["config"]["s0_levels"]})
    head = ["run", "tokenizer", "layers", "values", "batch", "lr", *(f"N={n} passed at" for n in levels),
            "last held-out (N: acc)", "steps", "s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in runs.items():
        c, s0 = r["config"], r["stage0"]
        passed = {p["N"]: p["step"] for p in s0["passed"]}
        last = s0["curve"][-1] if s0["curve"] else None
        acc = f"{last['N']}: " + ", ".join(f"{f} {a:.2f}" for f, a in last["acc"].items()) if last else "-"
        batch = "+".join(f"{k} {v}" for k, v in c["s0_batch"].items() if v)
        rows.append("| " + " | ".join([name, c["tokenizer"], str(c["lm_layers"]), str(c["s0_values"]), batch, str(c["s0_lr"]),
                                       *(str(passed.get(n, "-")) for n in levels), acc,
                                       str(s0["steps_done"]), f"{s0['seconds']:.0f}"]) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    from core_eval.organism.train import DEFAULTS, build_model, build_processor, build_tokenizer

    ap = argparse.ArgumentParser(description="Stage 0 alone on a fresh organism (sweep runs).")
    ap.add_argument("--out", help="JSON file for the config and learning curves")
    ap.add_argument("--summary", nargs="+", metavar="JSON",
                    help="instead of training: print the markdown table of these runs' JSON")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock cap")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    a = ap.parse_args(argv)
    if a.summary:
        from pathlib import Path

        print(sweep_table({Path(p).stem: json.loads(Path(p).read_text()) for p in a.summary}))
        return 0
    if not a.out:
        ap.error("--out is required to train")
    c = json.loads(json.dumps({**DEFAULTS, "tokenizer": "v2", "s0_steps": 2000}))
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in c:
            raise SystemExit(f"unknown config key {k!r}; known: {sorted(c)}")
        c[k] = json.loads(v)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(c["seed"])
    tok = build_tokenizer(c)
    processor = build_processor(tok)
    model = build_model(tok, c)
    rec = {"config": c, "threads": a.threads, "torch": torch.__version__}
    with torch.enable_grad():
        stage0(model, processor, c, rec, deadline=time.time() + 60 * a.minutes)
    from pathlib import Path

    Path(a.out).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
