"""Forward-pass time of an ablated model vs the unmodified one, measured side by side.

A ~163M-parameter LLaVA-shaped random model (Vicuna-like LM: 12 layers x 12 heads, hidden 768;
49M of the parameters are the untied embedding and LM head; a tiny CLIP tower so the LM
dominates), one prompt of ``--tokens`` tokens of which 576 are visual. Configurations are timed
in interleaved rounds (so drift hits all alike) and the median process CPU time is reported
(robust when other processes share the cores), with the ratio to the unmodified model. Target: overhead <= 3%.

    python benchmarks/ablation_overhead.py [--tokens 1024] [--rounds 7] [--frac 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from core_eval.intervene import apply_intervention
from core_eval.spec import select_heads


def build(seed=0):
    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=32064, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=8192)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14)
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_id=32000,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    cfg._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(cfg).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frac", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build()
    n_vis = 576
    ids = torch.randint(1, 32000, (1, args.tokens))
    ids[0, 1 : 1 + n_vis] = 32000
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(1, 3, 336, 336)}
    g = torch.Generator().manual_seed(0)
    heads = select_heads(torch.rand(12, 12, generator=g).numpy(), "top", frac=args.frac)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {n_params:.0f}M params, {args.tokens} tokens ({n_vis} visual), "
          f"{len(heads)} heads ablated ({args.frac:.0%}), {torch.get_num_threads()} threads")
    means = torch.randn(12, 12, 64)
    configs = {"unmodified": None, "zero": {}, "mean": {"means": means}, "uniform": {}, "visual_knockout": {}}
    times = {k: [] for k in configs}

    def fwd():  # process CPU time: robust to other processes sharing the cores
        with torch.no_grad():
            t = time.process_time()
            model(**inputs)
            return time.process_time() - t

    fwd()  # warm-up
    for _ in range(args.rounds):
        for name, opts in configs.items():
            iv = None if opts is None else apply_intervention(model, heads, name, **opts)
            fwd()  # per-config warm-up (first call after a backend switch)
            times[name].append(fwd())
            if iv is not None:
                iv.remove()
    base = statistics.median(times["unmodified"])
    print(f"{'config':18s} {'median CPU s':>12s} {'ratio':>7s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:18s} {m:12.4f} {m / base:7.3f}")


if __name__ == "__main__":
    main()
