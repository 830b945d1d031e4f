"""RAM capture vs a plain forward vs the naive output_attentions path, side by side.

A ~163M-parameter LLaVA-shaped random model (Vicuna-like LM: 12 layers x 12 heads, hidden 768,
113M parameters in its decoder layers, 163M with the 32k-token embeddings and LM head; a tiny
CLIP tower so the LM dominates), one prompt of ``--tokens`` tokens of which 576 are
visual (a 24 x 24 patch grid); the target region is a 6 x 6 block of it (36 tokens); the query
rows are the ``--rows`` positions before the last (the answer rows of a teacher-forced pass).
All three configurations return logits for those rows only (``logits_to_keep``), so the LM's
attention and MLPs dominate and the capture's overhead is not diluted by the vocabulary matmul.

  (a) plain     SDPA forward.
  (b) capture   :class:`RamCapture` on every layer (SDPA output untouched; mass for the rows only).
  (c) naive     eager attention + ``output_attentions=True``; region columns of the rows summed.

Time: configurations timed in interleaved rounds (a b c, b a c, a b c, ...: drift hits all alike
and neither (a) nor (b) always runs first), after a short warm-up of each; the slow naive path
runs in the first ``--naive-rounds`` rounds only. Medians reported (min and max too), with
(b)/(a) (target <= 1.10) and (c)/(b) (target >= 3). (b) and (c) must agree on the masses
(max |diff| printed). The headline capture/plain ratio is the median of the per-round ratios
(the two ran back to back, so drift between rounds cancels); the ratio of medians and of the
fastest runs are printed too, and so is the time spent inside the capture's own per-layer work
(measured around it, so it does not depend on drift at all).

On a shared machine, run it when the load is low (printed at the start, after timing and at
the end): with other processes on the cores, every multi-threaded op waits for its threads,
which inflates the many small ops of (b) far more than the large ones of (a); ``--threads 1``
is the contention-proof setting (e.g. one core busy elsewhere).

Extra peak memory (target: (c) uses >= 10x more extra memory than (b)):

* CPU: every configuration runs in its own fresh child process (same model seed, same inputs,
  same warm-up), started with ``MALLOC_MMAP_THRESHOLD_=131072`` so that glibc returns freed
  blocks above 128 KiB to the OS at once (RSS then follows live memory instead of keeping freed
  heap). The child reads its resident set size (``VmRSS``) right before the forward, resets the
  kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), runs the forward and reads the
  peak (``VmHWM``). Extra = peak - before; (b) and (c) are reported over (a). The kernel counts
  every resident page, torch's or not, so nothing the forward allocates is missed; the
  resolution is a few MB (allocator and page-table noise).
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus ``memory_allocated`` before, in this process.

    python benchmarks/ram_capture.py [--tokens 3072] [--rows 8] [--rounds 5] [--naive-rounds 3]
                                     [--threads N] [--device cpu|cuda] [--no-memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

CONFIGS = ("plain", "capture", "naive")
N_VIS, GRID, IMAGE_TOKEN = 576, 24, 32000


def build(seed=0, device="cpu"):
    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=32064, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=8192)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14)
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    cfg._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(cfg).eval().to(device)


def make_inputs(tokens: int, n_rows: int, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IMAGE_TOKEN, (1, tokens), generator=g)
    ids[0, 1:1 + N_VIS] = IMAGE_TOKEN
    region = torch.zeros(1, tokens, dtype=torch.bool)
    cells = torch.arange(N_VIS).view(GRID, GRID)[9:15, 9:15].flatten()  # a 6 x 6 block of the grid
    region[0, 1 + cells] = True
    rows = torch.arange(tokens - 1 - n_rows, tokens - 1)[None]
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
              "pixel_values": torch.randn(1, 3, 336, 336, generator=g).to(device),
              "logits_to_keep": n_rows + 1}
    return inputs, region, rows


class Runner:
    """The three configurations on one model; each call returns the (1, L, H) region mass."""

    def __init__(self, model):
        from core_eval.adapters import adapter_for
        from core_eval.scoring.capture import RamCapture

        self.model = model
        self.adapter = adapter_for(model)
        self.capture = RamCapture(model)
        self.observe_s = 0.0  # wall time spent inside the capture's per-layer work (last forward)
        inner = self.capture.observe

        def observe(*a, **k):  # instance attribute: the layer patches call owner.observe
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.observe_s += time.perf_counter() - t

        self.capture.observe = observe

    def __call__(self, name, inputs, region, rows):
        with torch.no_grad():
            if name == "plain":
                self.model(**inputs)
                return None
            if name == "capture":
                self.observe_s = 0.0
                with self.capture as cap:
                    cap.reset(region, rows)
                    self.model(**inputs)
                    return cap.result()["ram"]
            self.adapter.set_lm_attention("eager")
            try:
                out = self.model(**inputs, output_attentions=True)
                r = rows[0].to(inputs["input_ids"].device)
                reg = region[0].to(inputs["input_ids"].device, torch.float32)
                mass = torch.stack([(A[0][:, r].float() @ reg).mean(-1) for A in out.attentions])  # (L, H)
                del out
                return mass[None].cpu()
            finally:
                self.adapter.set_lm_attention("sdpa")


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _status(key: str) -> int:
    """``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(args) -> None:
    """One configuration in a fresh process: extra peak RSS of one forward (JSON on stdout)."""
    torch.set_num_threads(args.threads)
    model = build()
    run = Runner(model)
    small, sreg, srows = make_inputs(N_VIS + 64, args.rows, "cpu")
    run(args.child, small, sreg, srows)  # warm-up (lazy inits, thread pool)
    inputs, region, rows = make_inputs(args.tokens, args.rows, "cpu")
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    run(args.child, inputs, region, rows)
    peak = _status("VmHWM")
    print(json.dumps({"config": args.child, "before": before, "peak": peak, "extra": peak - before}))


def memory_cpu(args) -> dict[str, dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = {}
    for name in CONFIGS:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--tokens", str(args.tokens),
               "--rows", str(args.rows), "--threads", str(args.threads)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"memory child {name} failed:\n{res.stderr[-3000:]}")
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def memory_cuda(run, inputs, region, rows, device) -> dict[str, dict]:
    out = {}
    for name in CONFIGS:
        gc.collect()
        torch.cuda.empty_cache()
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run(name, inputs, region, rows)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        out[name] = {"config": name, "before": before, "peak": peak, "extra": peak - before}
    return out


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=3072)
    ap.add_argument("--rows", type=int, default=8, help="query rows captured (answer rows)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of plain and capture")
    ap.add_argument("--naive-rounds", type=int, default=3, help="timed rounds of the (slow) naive path")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tokens < N_VIS + args.rows + 2:
        ap.error(f"--tokens must be >= {N_VIS + args.rows + 2}")
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    model = build(device=device)
    run = Runner(model)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    n_layers = sum(p.numel() for p in model.get_decoder().layers.parameters()) / 1e6
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"machine: {platform.node()} {hw}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; {_load()} at start")
    print(f"model: {n_params:.0f}M params ({n_layers:.0f}M in the LM's 12 layers x 12 heads, hidden 768; the rest "
          f"embeddings + LM head), {args.tokens} tokens "
          f"({N_VIS} visual, region 36 tokens), {args.rows} query rows, {args.rounds} rounds "
          f"({args.naive_rounds} for naive)")

    small = make_inputs(N_VIS + 64, args.rows, device)
    for name in CONFIGS:
        run(name, *small)  # warm-up
    inputs, region, rows = make_inputs(args.tokens, args.rows, device)
    times = {name: [] for name in CONFIGS}
    masses = {}
    observe = []
    for i in range(max(args.rounds, args.naive_rounds)):
        order = ["plain", "capture"] if i % 2 == 0 else ["capture", "plain"]  # no fixed position
        order = (order if i < args.rounds else []) + (["naive"] if i < args.naive_rounds else [])
        for name in order:
            _sync(device)
            t = time.perf_counter()
            masses[name] = run(name, inputs, region, rows)
            _sync(device)
            times[name].append(time.perf_counter() - t)
            if name == "capture":
                observe.append(run.observe_s)
    load_after_timing = _load()
    diff = (masses["capture"] - masses["naive"]).abs().max().item()

    mem = None
    if not args.no_memory:
        mem = memory_cuda(run, inputs, region, rows, device) if device.type == "cuda" else memory_cpu(args)

    med = {k: statistics.median(v) for k, v in times.items()}
    MB = 2**20
    print()
    print(f"{'config':9s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'vs plain':>9s} {'extra peak MB':>14s}")
    for name in CONFIGS:
        extra = "" if mem is None else f"{(mem[name]['extra'] - mem['plain']['extra']) / MB:14.1f}"
        print(f"{name:9s} {med[name]:9.3f} {min(times[name]):8.3f} {max(times[name]):8.3f} "
              f"{med[name] / med['plain']:9.3f} {extra}")
    print()
    paired = [c / p for c, p in zip(times["capture"], times["plain"])]  # same round, back to back
    print(f"capture / plain time : {statistics.median(paired):.3f}x median of per-round ratios "
          f"[{' '.join(f'{r:.3f}' for r in paired)}]; ratio of medians {med['capture'] / med['plain']:.3f}x, "
          f"of minima {min(times['capture']) / min(times['plain']):.3f}x   (target <= 1.10)")
    obs = statistics.median(observe)
    print(f"inside the capture   : {obs * 1e3:.1f} ms per forward (median; {obs / med['capture']:.2%} of it) "
          f"in the per-layer mass computation")
    print(f"naive / capture time : {med['naive'] / med['capture']:.2f}x ratio of medians, "
          f"{min(times['naive']) / min(times['capture']):.2f}x ratio of minima   (target >= 3)")
    if mem is not None:
        xb = (mem["capture"]["extra"] - mem["plain"]["extra"]) / MB
        xc = (mem["naive"]["extra"] - mem["plain"]["extra"]) / MB
        how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else \
            "peak RSS (VmHWM reset per forward) in a fresh child process per config"
        print(f"extra peak memory over plain: capture {xb:.1f} MB, naive {xc:.1f} MB; "
              f"plain's own forward peak {mem['plain']['extra'] / MB:.1f} MB  [{how}]")
        floor = 1.0  # MB: below this the measurement cannot resolve a difference
        ratio = xc / max(xb, floor)
        sign = ">=" if xb < floor else ""
        print(f"naive / capture extra memory: {sign}{ratio:.0f}x   (target >= 10; capture extra floored at "
              f"{floor:.0f} MB for the ratio)")
    print(f"max |capture - naive| region mass: {diff:.2e}")
    print(f"{load_after_timing} after timing, {_load()} at end; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
