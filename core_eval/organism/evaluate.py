"""Greedy-generation evaluation of the organism (or any checkpoint) on the probe families.

The path is the one ``lm_eval --model hf-multimodal --apply_chat_template`` takes: the
processor's chat template, left padding, ``generate`` with greedy decoding, the generation cut
at the end-of-sequence token, exact match on the first line.

    python -m core_eval.organism.evaluate [--model DIR] [--n 100] [--seed 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core_eval.organism.data import CHANCE, FAMILIES, is_correct, make_samples
from core_eval.prompting import encode

__all__ = ["load", "greedy_answers", "evaluate_family", "evaluate"]


def load(model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, AutoProcessor.from_pretrained(model_dir)


@torch.no_grad()
def greedy_answers(model, processor, samples, *, batch_size: int = 25,
                   max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations (special tokens stripped) of each sample's chat prompt."""
    tok = getattr(processor, "tokenizer", processor)
    out: list[str] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        inputs = encode(processor, chunk, padding_side="left")
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        new = gen[:, inputs["input_ids"].shape[1]:]
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
    return out


def evaluate_family(model, processor, family: str, n: int = 100, seed: int = 1000, *,
                    style: str = "lm_eval", knobs: dict | None = None,
                    batch_size: int = 25) -> dict:
    """Exact match of greedy answers on ``n`` samples (task knobs unless ``knobs``)."""
    samples = make_samples(family, n, seed, style=style, knobs=knobs)
    preds = greedy_answers(model, processor, samples, batch_size=batch_size)
    hits = [is_correct(p, s) for p, s in zip(preds, samples)]
    return {
        "family": family, "style": style, "n": n, "seed": seed,
        "exact_match": sum(hits) / max(1, len(hits)),
        "chance": CHANCE[family][0],
        "examples": [{"answer": s.answer, "pred": p} for s, p in list(zip(samples, preds))[:5]],
    }


def evaluate(model, processor, *, n: int = 100, seed: int = 1000,
             families=FAMILIES, styles=("lm_eval", "plain")) -> dict:
    """``{"<family>/<style>": evaluate_family(...)}`` (text_needle has one style)."""
    res = {}
    for fam in families:
        for style in (("lm_eval",) if fam == "text_needle" else styles):
            t = time.time()
            r = evaluate_family(model, processor, fam, n, seed, style=style)
            r["seconds"] = round(time.time() - t, 1)
            res[f"{fam}/{style}"] = r
    return res


def main(argv=None) -> int:
    from core_eval.organism import organism_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the shipped organism)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, processor = load(a.model or organism_dir())
    res = evaluate(model, processor, n=a.n, seed=a.seed)
    for k, r in res.items():
        print(f"{k:32s} exact_match {r['exact_match']:.3f}  (chance {r['chance']:.3f}, n={r['n']})")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
