"""Dense vs hybrid sparse attention on the same model and inputs, measured side by side.

Two random LM shapes of ~162M / ~153M parameters (12 layers, hidden 768): multi-head attention (12 query =
12 KV heads, like LLaVA-1.5's Vicuna) and grouped-query attention (12 query / 4 KV heads). The
prompt is a few text tokens around ``N`` visual tokens (ids the benchmark's family entry marks as
visual). For each size and CoRe fraction (full heads = top by a seeded random score, mapped to KV
heads with policy ``any``) it prints:

* attention-only prefill / decode speedup (time inside the attention function, all layers),
* whole-model prefill / decode speedup (decode: median per-token step at that context),
* KV-cache bytes after prefill (dense vs hybrid) and their ratio,
* the attention share of the dense model and the Amdahl bound it implies
  (``1 / ((1 - share) + share / attention_speedup)``), and whole-model / bound.

Times are process CPU times (robust when other processes share the cores; with one thread they
equal wall time on an idle machine).

    python benchmarks/sparse_attention.py [--sizes 2048 8192 16384] [--fracs 0.05 0.10]
        [--shapes mha gqa] [--pattern streaming] [--window 256] [--sink 4] [--decode-steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from core_eval.adapters import Family, register_family
from core_eval.attention.function import core_eval_attention
from core_eval.attention.cache_kwarg import cache_kwarg
from core_eval.sparse import HybridCache
from core_eval.intervene import apply_intervention
from core_eval.spec import select_heads

IMAGE_TOKEN = 31000
SHAPES = {"mha": 12, "gqa": 4}
_ATTN_TIME = [0.0]


def timed_attention(*args, **kwargs):
    t = time.process_time()
    out = core_eval_attention(*args, **kwargs)
    _ATTN_TIME[0] += time.process_time() - t
    return out


def build(kv_heads: int, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=kv_heads, max_position_embeddings=32768,
                      rope_theta=1e6)
    cfg.image_token_id = IMAGE_TOKEN
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("bench_timed")  # dense == SDPA through the same timed entry point
    return model


def inputs_for(n_visual: int):
    ids = torch.randint(0, 30000, (1, n_visual + 48))
    ids[0, 16 : 16 + n_visual] = IMAGE_TOKEN
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run(model, inputs, decode_steps, hybrid=None):
    """(prefill s, prefill attention s, decode step s, decode attention s, kv bytes)."""
    cache = DynamicCache(config=model.config)
    if hybrid:
        cache = HybridCache(model.config, {l: (a.n_full_kv, a.pattern) for l, a in hybrid.items()})
        for l, a in hybrid.items():
            a.cache_layer = cache.layers[l]
    kw = cache_kwarg(model)  # outside the timed region
    with torch.no_grad():
        _ATTN_TIME[0] = 0.0
        t = time.process_time()
        out = model(**inputs, **{kw: cache}, use_cache=True, logits_to_keep=1)  # as generate() prefills
        prefill, prefill_attn = time.process_time() - t, _ATTN_TIME[0]
        kv = cache.kv_bytes() if hybrid else sum((l.keys.numel() + l.values.numel()) * l.keys.element_size()
                                                  for l in cache.layers)
        tok = out.logits[:, -1:].argmax(-1)
        mask = inputs["attention_mask"]
        steps, attn = [], []
        for _ in range(decode_steps):
            mask = torch.cat([mask, torch.ones_like(tok)], 1)
            _ATTN_TIME[0] = 0.0
            t = time.process_time()
            out = model(input_ids=tok, attention_mask=mask, **{kw: cache}, use_cache=True)
            steps.append(time.process_time() - t)
            attn.append(_ATTN_TIME[0])
            tok = out.logits[:, -1:].argmax(-1)
    return prefill, prefill_attn, statistics.median(steps), statistics.median(attn), kv


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--fracs", type=float, nargs="+", default=[0.05, 0.10])
    ap.add_argument("--shapes", nargs="+", default=["mha", "gqa"], choices=list(SHAPES))
    ap.add_argument("--pattern", default="streaming", choices=["streaming", "text_only"])
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    AttentionInterface.register("bench_timed", timed_attention)
    AttentionMaskInterface.register("bench_timed", sdpa_mask)
    # the benchmark's token ids in [IMAGE_TOKEN] count as visual: one small family entry
    register_family(Family(name="bench_llama", model_types=("llama",), layers="model.layers", text_config=None,
                           vision=None, image_token_fields=("image_token_id",)), replace=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pattern={args.pattern} "
          f"sink={args.sink} window={args.window}")
    header = (f"{'shape':5s} {'visual':>7s} {'core':>5s} {'fullKV':>7s} | {'attn-pre':>8s} {'attn-dec':>8s} | "
              f"{'prefill':>7s} {'decode':>7s} | {'KV dense MB':>11s} {'KV ratio':>8s} | {'attn share':>10s} "
              f"{'Amdahl':>6s} {'pre/bound':>9s}")
    print(header)
    for shape in args.shapes:
        model = build(SHAPES[shape])
        L, H = 12, 12
        g = torch.Generator().manual_seed(0)
        scores = torch.rand(L, H, generator=g).numpy()
        run(model, inputs_for(256), 2)  # warm-up (thread pools, allocator)
        for n in args.sizes:
            inputs = inputs_for(n)
            dp, dpa, dd, dda, dkv = run(model, inputs, args.decode_steps)
            share = dpa / dp
            for frac in args.fracs:
                heads = select_heads(scores, "top", frac=frac)
                iv = apply_intervention(model, heads, args.pattern, sink=args.sink, window=args.window)
                hybrid = {l: model.model.layers[l].self_attn._core_eval_compute for l in iv.variant.hybrid_layers}
                n_full = sum(len(v) for v in iv.variant.full_kv.values())
                model.set_attn_implementation("bench_timed")
                sp, spa, sd, sda, skv = run(model, inputs, args.decode_steps, hybrid)
                iv.remove()
                model.set_attn_implementation("bench_timed")
                attn_pre = dpa / spa
                bound = 1 / ((1 - share) + share / attn_pre)
                print(f"{shape:5s} {n:7d} {frac:5.0%} {n_full / (L * SHAPES[shape]):7.1%} | {attn_pre:7.2f}x "
                      f"{dda / sda:7.2f}x | {dp / sp:6.2f}x {dd / sd:6.2f}x | {dkv / 2**20:11.1f} {skv / dkv:8.3f} | "
                      f"{share:10.1%} {bound:5.2f}x {(dp / sp) / bound:9.1%}", flush=True)


if __name__ == "__main__":
    main()
