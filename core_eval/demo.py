"""The README's main job. Until RAM scoring and the bundled organism land, it runs the smallest
real pipeline: a tiny offline LLaVA, generated grid-needle probes, and every built-in ablation
mode on the same heads, reporting how much each changes the answer distribution.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core_eval._io import atomic_write


def run_demo(out_dir: str | Path = "core_eval_runs/demo") -> dict:
    from core_eval import load
    from core_eval.probes import generate
    from core_eval.prompting import encode
    from core_eval.testing import tiny_model_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model_dir("llava")
    samples = generate("grid_needle", 8, seed=0, grid=3, image_size=96)
    base = load(model_dir, heads="none")
    inputs = encode(base.processor, samples)
    with torch.no_grad():
        ref = base.model(**inputs).logits[:, -1].log_softmax(-1)
    heads = [(1, 0), (2, 3)]
    rows = []
    for mode in ("zero", "mean", "uniform", "visual_knockout"):
        loaded = load(model_dir, heads=heads, ablation=mode)
        with torch.no_grad():
            lp = loaded.model(**inputs).logits[:, -1].log_softmax(-1)
        kl = torch.nn.functional.kl_div(lp, ref, log_target=True, reduction="batchmean").item()
        rows.append({"mode": mode, "kl_to_baseline": kl, "summary": loaded.summary})
        print(f"{mode:16s} heads={loaded.summary['heads_per_layer']}  KL(baseline || ablated) = {kl:.4g}")
    result = {"model": str(model_dir), "n_samples": len(samples), "runs": rows}
    path = out / "ablation_demo.json"
    atomic_write(path, json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result
