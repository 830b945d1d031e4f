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

On the CPU, times are process CPU times (robust when other processes share the cores; with one
thread they equal wall time on an idle machine). On CUDA they are wall times between device
synchronisations. ``peak MB d/h`` is the prefill's peak memory above what was held before it (dense /
hybrid): CUDA allocator statistics, or on the CPU the process's peak RSS (``VmHWM``, reset before the
prefill; the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=131072`` so freed blocks go back to
the OS and RSS follows live memory). The
FlexAttention backend's compile time is reported apart: each configuration runs one untimed
prefill first, and the seconds its first calls took per compiled shape are printed as
``compile s`` (0 when the kernel was already compiled for that bucket).

``--chunk N`` also prefills dense and hybrid in forwards of ``N`` tokens through their caches
(``core_eval.sparse.cache.chunked_prefill``; the hybrid cache folds each chunk into its per-head store,
and a chunk's sparse heads see the store's kept keys plus the chunk's own, which is exactly the set the
pattern allows: the store keeps every far key and the last ``window`` positions) and prints time, peak
memory and the largest logit difference to the one-shot prefill. Text prompts only: a chunk carries
no image inputs, and a bidirectional block (Gemma 3's image, PaliGemma's prefix) cut by a chunk
boundary would not be the model's attention, dense or sparse.

``--decode-paths`` times the decode step side by side for the sparse group's paths: ``sdpa`` (one SDPA
call on the store's used slots, the default), ``flex`` (FlexAttention on the whole store, compiled once
per store capacity; the median step leaves its first-step compile out) and ``dense`` (a dense cache,
masked SDPA over every key: no KV saving).

    python benchmarks/sparse_attention.py [--sizes 2048 8192 16384] [--fracs 0.05 0.10]
        [--shapes mha gqa small] [--pattern streaming] [--window 256] [--sink 4] [--decode-steps 8]
        [--backend auto|flex|blocks] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--chunk N] [--decode-paths sdpa flex dense]

GPU, 7B-model shapes with random weights (one command; ~15 GB of weights per shape):

    python benchmarks/sparse_attention.py --device cuda --dtype bfloat16 --shapes mha7b gqa7b \
        --sizes 8192 16384 32768 65536 --fracs 0.05 0.10 --backend flex blocks --check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from core_eval.adapters import Family, register_family
from core_eval.attention.cache_kwarg import cache_kwarg
from core_eval.attention.function import core_eval_attention
from core_eval.intervene import apply_intervention
from core_eval.sparse import COMPILE_SECONDS, HybridCache
from core_eval.sparse.cache import chunked_prefill
from core_eval.spec import select_heads

IMAGE_TOKEN = 31000
#: name -> (layers, query heads, KV heads, hidden, MLP): ~160M CPU shapes (``small``: 4 layers, quick runs);
#: a 7B MHA (Llama-2-7B / Vicuna, LLaVA-1.5's LM) and the Qwen2.5-VL-7B text shape (28 x 28 query / 4 KV
#: heads, head_dim 128)
SHAPES = {"mha": (12, 12, 12, 768, 3072), "gqa": (12, 12, 4, 768, 3072), "small": (4, 8, 8, 512, 1408),
          "mha7b": (32, 32, 32, 4096, 11008), "gqa7b": (28, 28, 4, 3584, 18944)}
_ATTN_TIME = [0.0]
_DEVICE = [torch.device("cpu")]


def clock() -> float:
    """Process CPU time on the CPU; wall time after a device synchronisation on CUDA."""
    if _DEVICE[0].type == "cuda":
        torch.cuda.synchronize(_DEVICE[0])
        return time.perf_counter()
    return time.process_time()


def timed_attention(*args, **kwargs):
    t = clock()
    out = core_eval_attention(*args, **kwargs)
    _ATTN_TIME[0] += clock() - t
    return out


def build(shape: str, device, dtype, seed=0):
    torch.manual_seed(seed)
    L, H, KV, hidden, mlp = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=131072,
                      rope_theta=1e6)
    cfg.image_token_id = IMAGE_TOKEN
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random weights created in the target dtype, on the target device
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation("bench_timed")  # dense == SDPA through the same timed entry point
    return model


def inputs_for(n_visual: int):
    ids = torch.randint(0, 30000, (1, n_visual + 48))
    ids[0, 16 : 16 + n_visual] = IMAGE_TOKEN
    return {"input_ids": ids.to(_DEVICE[0]), "attention_mask": torch.ones_like(ids).to(_DEVICE[0])}


def mem_start() -> int:
    """Start a peak-memory region: CUDA allocator stats, or the process's peak RSS (``VmHWM``) reset."""
    if _DEVICE[0].type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(_DEVICE[0])
        return torch.cuda.memory_allocated(_DEVICE[0])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return _status("VmRSS")


def mem_peak(start: int) -> int:
    """Peak bytes above ``start`` since :func:`mem_start`."""
    if _DEVICE[0].type == "cuda":
        return torch.cuda.max_memory_allocated(_DEVICE[0]) - start
    return _status("VmHWM") - start


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def run(model, inputs, decode_steps, hybrid=None, chunk=0):
    """(prefill s, prefill attention s, decode step s, decode attention s, kv bytes, peak prefill bytes,
    last prefill logits). ``chunk``: prefill in forwards of that many tokens (0: one forward)."""
    cache = HybridCache.attached(model.config, hybrid) if hybrid else DynamicCache(config=model.config)
    kw = cache_kwarg(model)  # outside the timed region
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        start = mem_start()
        _ATTN_TIME[0] = 0.0
        t = clock()
        logits = chunked_prefill(model, ids, mask, cache, chunk or ids.shape[1], last_only=True)  # as generate()
        prefill, prefill_attn = clock() - t, _ATTN_TIME[0]
        peak = mem_peak(start)
        kv = cache.kv_bytes() if hybrid else sum((l.keys.numel() + l.values.numel()) * l.keys.element_size()
                                                  for l in cache.layers)
        tok = logits[:, -1:].argmax(-1)
        steps, attn = [], []
        for _ in range(decode_steps):
            mask = torch.cat([mask, torch.ones_like(tok)], 1)
            _ATTN_TIME[0] = 0.0
            t = clock()
            out = model(input_ids=tok, attention_mask=mask, **{kw: cache}, use_cache=True)
            steps.append(clock() - t)
            attn.append(_ATTN_TIME[0])
            tok = out.logits[:, -1:].argmax(-1)
    return prefill, prefill_attn, statistics.median(steps), statistics.median(attn), kv, peak, logits


def check(shape: str, device, pattern: str, sink: int, n_visual: int = 1000) -> float:
    """Exactness on this device before timing: a 2-layer float32 model of ``shape``; the flex and blocks
    backends must agree (each is tested against the explicit-mask oracle on the CPU), and with a window
    covering the prompt the hybrid model must equal the dense one. Returns the largest difference."""
    L, H, KV, hidden, mlp = SHAPES[shape]
    SHAPES["_check"] = (2, H, KV, hidden, mlp)
    model = build("_check", device, torch.float32)
    inputs = inputs_for(n_visual)
    heads = [(0, 0), (1, 1)]
    with torch.no_grad():
        dense = model(**inputs).logits
        got = {}
        for backend, window in (("flex", 64), ("blocks", 64), ("flex", 10**6)):
            iv = apply_intervention(model, heads, pattern, sink=sink, window=window, backend=backend)
            model.set_attn_implementation("bench_timed")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "the window covers the prompt": intended here
                got[backend, window] = model(**inputs).logits
            iv.remove()
            model.set_attn_implementation("bench_timed")
    worst = max((got["flex", 64] - got["blocks", 64]).abs().max().item(),
                (got["flex", 10**6] - dense).abs().max().item())
    moved = (got["flex", 64] - dense).abs().max().item()
    print(f"check {shape}: flex vs blocks / nothing-dropped vs dense: max |diff| {worst:.2e} "
          f"(the pattern itself moves logits by {moved:.2e})", flush=True)
    del model
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--fracs", type=float, nargs="+", default=[0.05, 0.10])
    ap.add_argument("--shapes", nargs="+", default=["mha", "gqa"], choices=list(SHAPES))
    ap.add_argument("--pattern", default="streaming", choices=["streaming", "text_only"])
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--backend", nargs="+", default=["auto"], choices=["auto", "flex", "blocks"],
                    help="prefill backends of the hybrid model, each measured against the same dense run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    ap.add_argument("--check", action="store_true",
                    help="first check exactness on this device (float32, 2 layers per shape); exit 1 above 1e-4")
    ap.add_argument("--chunk", type=int, default=0,
                    help="also prefill dense and hybrid in chunks of N tokens through the cache: time, peak memory, "
                         "difference to the one-shot prefill")
    ap.add_argument("--decode-paths", nargs="+", default=[], choices=["sdpa", "flex", "dense"],
                    help="decode of the sparse group side by side: sdpa / flex on the hybrid cache's store, dense "
                         "(masked SDPA on a dense cache)")
    args = ap.parse_args()
    if args.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc then returns freed blocks above 128 KiB at once: RSS follows live memory (peak memory)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    torch.set_num_threads(args.threads)
    _DEVICE[0] = device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    AttentionInterface.register("bench_timed", timed_attention)
    AttentionMaskInterface.register("bench_timed", sdpa_mask)
    # the benchmark's token ids in [IMAGE_TOKEN] count as visual: one small family entry
    register_family(Family(name="bench_llama", model_types=("llama",), layers="model.layers", text_config=None,
                           vision=None, image_token_fields=("image_token_id",)), replace=True)
    if args.check and max(check(sh, device, args.pattern, args.sink) for sh in args.shapes) > 1e-4:
        raise SystemExit("exactness check failed: the sparse backends disagree on this device")
    print(f"torch {torch.__version__}, {device}, {args.dtype}, {torch.get_num_threads()} threads; pattern={args.pattern} "
          f"sink={args.sink} window={args.window}")
    header = (f"{'shape':5s} {'visual':>7s} {'core':>5s} {'fullKV':>7s} {'backend':>7s} | {'attn-pre':>8s} {'attn-dec':>8s} | "
              f"{'prefill':>7s} {'decode':>7s} | {'KV dense MB':>11s} {'KV ratio':>8s} | {'peak MB d/h':>13s} | "
              f"{'attn share':>10s} {'Amdahl':>6s} {'pre/bound':>9s} | {'compile s':>9s} | {'dense pre s':>11s} {'dec ms':>7s}")
    print(header)
    for shape in args.shapes:
        model = build(shape, device, dtype)
        L, H, KV = SHAPES[shape][:3]
        g = torch.Generator().manual_seed(0)
        scores = torch.rand(L, H, generator=g).numpy()
        run(model, inputs_for(256), 2)  # warm-up (thread pools, allocator, kernels)
        for n in args.sizes:
            inputs = inputs_for(n)
            dp, dpa, dd, dda, dkv, dpeak, dlog = run(model, inputs, args.decode_steps)
            share = dpa / dp
            if args.chunk:
                dense_chunked = run(model, inputs, 1, chunk=args.chunk)
            for frac in args.fracs:
                heads = select_heads(scores, "top", frac=frac)
                for backend in args.backend:
                    iv = apply_intervention(model, heads, args.pattern, sink=args.sink, window=args.window,
                                            backend=backend)
                    hybrid = {l: model.model.layers[l].self_attn._core_eval_compute for l in iv.variant.hybrid_layers}
                    n_full = sum(len(v) for v in iv.variant.full_kv.values())
                    model.set_attn_implementation("bench_timed")
                    compiled = dict(COMPILE_SECONDS)
                    run(model, inputs, 1, hybrid)  # untimed: compiles the flex kernel for this bucket, if needed
                    compile_s = sum(v for k, v in COMPILE_SECONDS.items() if k not in compiled)
                    sp, spa, sd, sda, skv, speak, slog = run(model, inputs, args.decode_steps, hybrid)
                    used = {a.last_backend for a in hybrid.values()}
                    extra = []
                    if args.chunk:
                        if "flex" in used:  # untimed: the first chunk's bucket compiles
                            run(model, inputs, 1, hybrid, chunk=args.chunk)
                        hc = run(model, inputs, 1, hybrid, chunk=args.chunk)
                        dc = dense_chunked
                        extra.append(
                            f"  chunk {args.chunk}: prefill s dense {dp:.2f} -> {dc[0]:.2f}, hybrid {sp:.2f} -> {hc[0]:.2f}; "
                            f"peak MB dense {dpeak / 2**20:.0f} -> {dc[5] / 2**20:.0f}, hybrid {speak / 2**20:.0f} -> "
                            f"{hc[5] / 2**20:.0f}; max |logits chunked - one-shot| dense {(dc[6] - dlog).abs().max():.1e}, "
                            f"hybrid {(hc[6] - slog).abs().max():.1e}")
                    paths = []
                    for path in args.decode_paths:  # median step: the flex decode's first-step compile drops out
                        for a in hybrid.values():
                            a.decode_path = "sdpa" if path == "dense" else path
                        r = run(model, inputs, args.decode_steps, None if path == "dense" else hybrid)
                        paths.append(f"{path} {r[2] * 1e3:.1f} / {r[3] * 1e3:.1f} ms (KV {r[4] / 2**20:.0f} MB)")
                    if paths:
                        extra.append("  decode step / its attention: " + ", ".join(paths))
                    iv.remove()
                    model.set_attn_implementation("bench_timed")
                    attn_pre = dpa / spa
                    bound = 1 / ((1 - share) + share / attn_pre)
                    peak = f"{dpeak / 2**20:6.0f}/{speak / 2**20:<6.0f}"
                    print(f"{shape:5s} {n:7d} {frac:5.0%} {n_full / (L * KV):7.1%} {'/'.join(sorted(used)):>7s} | "
                          f"{attn_pre:7.2f}x {dda / sda:7.2f}x | {dp / sp:6.2f}x {dd / sd:6.2f}x | {dkv / 2**20:11.1f} "
                          f"{skv / dkv:8.3f} | {peak:>13s} | {share:10.1%} {bound:5.2f}x {(dp / sp) / bound:9.1%} | "
                          f"{compile_s:9.1f} | {dp:11.3f} {dd * 1e3:7.1f}", flush=True)
                    for line in extra:
                        print(line, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
