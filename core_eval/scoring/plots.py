"""Plots of RAM scores and of where top heads look (PNG, matplotlib Agg, written atomically).

* :func:`ram_heatmap`: layer x head heatmap of a score array of a head spec, selected heads
  outlined, colour bar, model and scorer in the title.
* :func:`attention_overlay`: for one probe sample, each given head's attention over the image:
  the head's attention rows (teacher-forced answer rows, or the last prompt row) are kept by
  :class:`~core_eval.scoring.capture.RamCapture` (``keep=``; no ``output_attentions``, outputs
  unchanged), averaged over the rows, mapped onto the image through each visual token's patch
  rectangle (:func:`~core_eval.adapters.regions.token_rects`) and drawn as a heat overlay with
  the target box outlined and the head's RAM on this sample in the panel title.
* :func:`token_heat` / :func:`overlay_rgb`: the drawing helpers (per-token weights -> per-pixel
  heat -> blended RGB), usable on their own.
* CLI: :func:`add_plot_parser` / :func:`run_plot` (``core-eval plot heatmap|overlay``).

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state, no
GUI backend), at a fixed size and DPI (no tight bounding box), so a plot's pixel size depends
only on its layout. Files are written to a temporary name next to the target and renamed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DPI = 100
MAX_PANELS = 6
ROWS = ("answer", "last", "key")  # the teacher-forced ones of core_eval.scoring.ram.QUERY_ROWS
BOX_COLOUR = "#00e5ff"
SELECTED_COLOUR = "#ff2d2d"
HEAT_COLOUR = (1.0, 0.12, 0.0)  # overlay colour (RGB in [0, 1]); opacity = attention mass


# ----------------------------------------------------------------------------- common


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    """PNG at a temp name in the target folder, then an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


def _short_name(name: str) -> str:
    parts = Path(str(name)).parts
    return str(Path(*parts[-2:])) if len(parts) > 2 else str(name)


# ----------------------------------------------------------------------------- heatmap


def heatmap_figsize(num_layers: int, num_heads: int) -> tuple[float, float]:
    """Figure size in inches (at :data:`DPI`) of :func:`ram_heatmap` for an ``L x H`` model."""
    return max(6.0, 0.32 * num_heads + 2.8), max(4.0, 0.26 * num_layers + 1.8)


def _scorer_line(spec, score: str) -> str:
    sc = spec.scorer or {}
    bits = [str(sc.get("name", "scores"))]
    if sc.get("probes"):
        bits.append(f"probes {sc['probes']}")
    n = sc.get("n_used", sc.get("n_samples"))
    if n is not None:
        bits.append(f"n={n}")
    if sc.get("query_rows"):
        bits.append(f"rows={sc['query_rows']}")
    rule = spec.rule
    how = str(rule.get("rule"))
    if rule.get("frac") is not None:
        how += f" {rule['frac']:.0%}"
    elif rule.get("k") is not None:
        how += f" k={rule['k']}"
    if rule.get("score"):
        how += f" by {rule['score']}"
    n_sel = len(spec.heads)
    bits.append(f"selection: {how} ({n_sel} head{'' if n_sel == 1 else 's'} outlined)")
    if score != rule.get("score"):
        bits.append(f"shown: {score}")
    return " · ".join(bits)


def ram_heatmap(spec, path, score: str = "ram", *, title: str | None = None) -> Path:
    """Layer x head heatmap of ``spec.score(score)`` with the selected heads outlined.

    ``spec``: a :class:`~core_eval.spec.HeadSpec` or a path (any format :func:`load_head_spec`
    reads). Layer 0 is the top row. Returns the written path.
    """
    from matplotlib.patches import Rectangle

    from core_eval.spec import HeadSpec, load_head_spec

    if not isinstance(spec, HeadSpec):
        spec = load_head_spec(spec)
    arr = np.asarray(spec.score(score), dtype=np.float64)
    L, H = arr.shape
    fw, fh = heatmap_figsize(L, H)
    fig = _figure(fw, fh)
    left, right, bottom, top = 0.65, 1.0, 0.55, 1.05  # margins in inches (top: the three title lines)
    ax = fig.add_axes((left / fw, bottom / fh, (fw - left - right) / fw, (fh - bottom - top) / fh))
    cax = fig.add_axes(((fw - right + 0.12) / fw, bottom / fh, 0.14 / fw, (fh - bottom - top) / fh))
    im = ax.imshow(arr, aspect="auto", cmap="viridis", interpolation="nearest", origin="upper")
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(score)
    for layer, head in spec.heads:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=SELECTED_COLOUR,
                               linewidth=1.8))
    step_h = max(1, math.ceil(H / 24))
    step_l = max(1, math.ceil(L / 24))
    ax.set_xticks(range(0, H, step_h))
    ax.set_yticks(range(0, L, step_l))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    name = _short_name(spec.model.get("name", "")) or spec.model.get("architecture", "model")
    w_in = fw
    fig.text(0.5, 1 - 0.1 / fh, title or f"{score.upper() if score == 'ram' else score} per head, {L} layers x {H} heads",
             ha="center", va="top", fontsize=11, weight="bold")
    fig.text(0.5, 1 - 0.38 / fh, _clip(str(name), int(w_in * 13)), ha="center", va="top", fontsize=8)
    line = _scorer_line(spec, score)
    fig.text(0.5, 1 - 0.58 / fh, line if len(line) <= w_in * 15 else line.replace(" · selection", "\nselection", 1),
             ha="center", va="top", fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------- overlay helpers


def compose_images(images: Sequence[Any], gap: int | None = None):
    """Side-by-side canvas of PIL images on a grey background (gap: 1/16 of the tallest image).
    Returns ``(canvas, offsets)``, offsets ``[(x, y), ...]`` of each image's top-left corner."""
    from PIL import Image

    images = [im.convert("RGB") for im in images]
    if gap is None:
        gap = max(4, max(im.height for im in images) // 16)
    W = sum(im.width for im in images) + gap * (len(images) - 1)
    Hc = max(im.height for im in images)
    canvas = Image.new("RGB", (W, Hc), (128, 128, 128))
    offsets, x = [], 0
    for im in images:
        canvas.paste(im, (x, 0))
        offsets.append((x, 0))
        x += im.width + gap
    return canvas, offsets


def token_heat(size: tuple[int, int], rects, weights, *, image=None, offsets=None, image_sizes=None,
               density: bool = True) -> np.ndarray:
    """Per-pixel heat ``(height, width)`` float64 of a canvas of ``size`` ``(width, height)``.

    ``rects`` ``(N, 4)`` ``[x0, y0, x1, y1]`` per token in its image's pixels (NaN rows are
    skipped), ``weights`` ``(N,)`` the token's attention mass. ``image`` ``(N,)`` the token's image
    index, ``offsets`` each image's top-left corner in the canvas and ``image_sizes`` its
    ``(width, height)`` (rects are clipped to it); defaults: one image filling the canvas.
    A pixel gets the sum over the tokens whose rectangle contains its centre of
    ``weight / area`` (``density=True``: mass per pixel, so coarse tokens — a thumbnail, a
    global view — do not outshine fine ones) or of ``weight`` (``density=False``).
    """
    W, Hc = int(size[0]), int(size[1])
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    N = len(rects)
    image = np.zeros(N, dtype=np.int64) if image is None else np.asarray(image, dtype=np.int64)
    offsets = [(0, 0)] if offsets is None else list(offsets)
    image_sizes = [(W, Hc)] if image_sizes is None else list(image_sizes)
    heat = np.zeros((Hc, W), dtype=np.float64)
    for j in range(N):
        r, i = rects[j], int(image[j])
        if not np.isfinite(r).all() or i < 0 or weights[j] == 0:
            continue
        iw, ih = image_sizes[i]
        x0, x1 = np.clip([r[0], r[2]], 0, iw)
        y0, y1 = np.clip([r[1], r[3]], 0, ih)
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            continue
        ox, oy = offsets[i]
        # pixels whose centre (p + 0.5) lies in [x0, x1)
        px0, px1 = int(math.ceil(x0 - 0.5)), int(math.ceil(x1 - 0.5))
        py0, py1 = int(math.ceil(y0 - 0.5)), int(math.ceil(y1 - 0.5))
        heat[oy + py0: oy + py1, ox + px0: ox + px1] += weights[j] / area if density else weights[j]
    return heat


def overlay_rgb(image, heat: np.ndarray, *, vmax: float | None = None, alpha_max: float = 0.75,
                colour: tuple[float, float, float] = HEAT_COLOUR, desaturate: float = 0.6) -> np.ndarray:
    """Blend ``heat`` over ``image`` (PIL or ``(h, w, 3)`` uint8) -> uint8 ``(h, w, 3)``.

    The image is partly desaturated (``desaturate`` = weight of its grey value) so that the heat
    colour stands out on any content, then ``colour`` is laid over it with opacity
    ``alpha_max * heat / vmax`` (default ``vmax``: the heat's maximum): the opacity is the
    attention mass per pixel, so on a grey pixel the colour's strength grows with the heat.
    """
    base = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64) / 255.0
    grey = base @ np.array([0.299, 0.587, 0.114])
    base = (1 - desaturate) * base + desaturate * grey[..., None]
    vmax = float(heat.max()) if vmax is None else float(vmax)
    h = np.clip(heat / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(heat)
    a = (alpha_max * h)[..., None]
    return np.round(255 * ((1 - a) * base + a * np.asarray(colour, dtype=np.float64))).astype(np.uint8)


# ----------------------------------------------------------------------------- overlay


_OVERLAY_HEAD, _OVERLAY_FOOT, _OVERLAY_SIDE = 0.75, 0.12, 0.15  # inches


def _overlay_grid(n_heads: int, canvas_size: tuple[int, int]):
    ncols = min(3, n_heads)
    nrows = math.ceil(n_heads / ncols)
    W, Hc = canvas_size
    pw = 3.6 if W <= 1.5 * Hc else 5.4  # panel width (in); wide canvases (several images) get more
    ph = pw * Hc / W + 0.45  # image + panel title
    return ncols, nrows, pw, ph


def overlay_figsize(n_heads: int, canvas_size: tuple[int, int]) -> tuple[float, float]:
    """Figure size in inches (at :data:`DPI`) of :func:`attention_overlay`: ``n_heads`` panels
    (3 per row) of a canvas of ``canvas_size`` ``(width, height)`` pixels (:func:`compose_images`)."""
    ncols, nrows, pw, ph = _overlay_grid(n_heads, canvas_size)
    return pw * ncols + 2 * _OVERLAY_SIDE, ph * nrows + _OVERLAY_HEAD + _OVERLAY_FOOT


@dataclass
class Overlay:
    """What :func:`attention_overlay` drew: per head (in ``heads`` order) the sample's RAM and
    visual mass, and ``weights`` ``(h, T)`` the attention per position averaged over the rows."""

    path: Path
    heads: list[tuple[int, int]]
    ram: np.ndarray
    visual_mass: np.ndarray
    weights: np.ndarray
    rows: np.ndarray
    extra: dict = field(default_factory=dict)


def top_heads(spec, k: int = 4, score: str = "ram") -> list[tuple[int, int]]:
    """The ``k`` heads with the highest ``spec.score(score)`` (ties: lower layer, then head)."""
    arr = np.asarray(spec.score(score))
    order = sorted(((-float(arr[l, h]), l, h) for l in range(arr.shape[0]) for h in range(arr.shape[1])))
    return [(l, h) for _, l, h in order[:k]]


def attention_overlay(model, processor, sample, heads, path, rows: str = "answer", *, spec=None,
                      score: str = "ram", normalize: str = "head", title: str | None = None) -> Overlay:
    """One figure, one panel per head (up to :data:`MAX_PANELS`): the image(s) of ``sample`` with
    the head's attention as a heat overlay, the target box(es) outlined, the head's RAM on this
    sample (and its ``spec`` score when given) in the panel title.

    ``heads``: ``[(layer, head), ...]``; ``rows``: ``"answer"`` (the teacher-forced rows that
    predict the gold answer's tokens), ``"last"`` (the last prompt token) or ``"key"`` (the
    question's key tokens, :func:`~core_eval.prompting.key_rows`). The rows' attention is
    averaged; each visual token's weight is spread over its patch rectangle
    (:func:`token_heat`, mass per pixel). ``normalize``: ``"head"`` (each panel scaled to its own
    maximum) or ``"shared"`` (one scale for all panels).
    """
    import torch

    from core_eval.adapters import adapter_for
    from core_eval.adapters.regions import sample_region_masks, token_rects
    from core_eval.prompting import encode_teacher_forced, is_text_only
    from core_eval.scoring.capture import RamCapture
    from core_eval.scoring.ram import teacher_forced_rows

    if rows not in ROWS:
        raise ValueError(f"rows={rows!r}; use one of {', '.join(ROWS)}")
    if normalize not in ("head", "shared"):
        raise ValueError(f"normalize={normalize!r}; use 'head' or 'shared'")
    if is_text_only(processor):
        raise ValueError("attention overlays need an image-text model (this processor is a bare tokenizer)")
    if getattr(sample, "videos", None):
        raise ValueError(f"sample {sample.id!r} holds a video: attention overlays draw images only; plot an image "
                         "probe (RAM scores of video probes are in the spec's scores)")
    heads = [(int(l), int(h)) for l, h in heads]
    if not heads:
        raise ValueError("no heads to draw")
    if len(heads) > MAX_PANELS:
        raise ValueError(f"{len(heads)} heads; an overlay figure holds at most {MAX_PANELS}")
    ad = adapter_for(model)
    if spec is not None:
        spec.check_shape(ad.shape)

    inputs, amask, starts = encode_teacher_forced(processor, [sample])
    masks = sample_region_masks(processor, inputs, [sample], family=ad)
    sizes = list(sample.image_sizes)
    tr = token_rects(processor, inputs, [sizes], family=ad)
    q_rows = teacher_forced_rows(rows, processor, inputs, amask, starts, [sample])
    keep: dict[int, list[int]] = {}
    for l, h in heads:
        keep.setdefault(l, [])
        if h not in keep[l]:
            keep[l].append(h)
    device = model.device
    with torch.no_grad(), RamCapture(model) as cap:
        cap.reset(masks.target, q_rows, keep=keep)
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()})
        res = cap.result()
        kept = cap.kept
    T = inputs["input_ids"].shape[1]
    n_rows = max(int(res["rows"][0]), 1)
    weights = np.zeros((len(heads), T))
    for i, (l, h) in enumerate(heads):
        a = kept[l][0, keep[l].index(h)].double().sum(0) / n_rows  # (kv,) mean over the rows
        kv = a.shape[0]
        w = torch.zeros(T, dtype=torch.float64)
        if kv >= T:
            w = a[:T]
        else:  # a sliding-window layer's keys: the last kv positions
            w[T - kv:] = a
        weights[i] = w.numpy()
    ram = np.array([float(res["ram"][0, l, h]) for l, h in heads])
    vis = np.array([float(res["visual_mass"][0, l, h]) for l, h in heads])

    canvas, offsets = compose_images(list(sample.images))
    visual = tr.visual[0].numpy()
    rects = tr.rects[0].numpy()[visual]
    img_idx = tr.image[0].numpy()[visual]
    heats = [token_heat(canvas.size, rects, weights[i][visual], image=img_idx, offsets=offsets, image_sizes=sizes)
             for i in range(len(heads))]
    shared = max((float(hm.max()) for hm in heats), default=0.0)
    spec_scores = np.asarray(spec.score(score)) if spec is not None else None

    n = len(heads)
    ncols, nrows, pw, ph = _overlay_grid(n, canvas.size)
    head, side = _OVERLAY_HEAD, _OVERLAY_SIDE
    fw, fh = overlay_figsize(n, canvas.size)
    fig = _figure(fw, fh)
    from matplotlib.patches import Rectangle

    for i, ((l, h), hm) in enumerate(zip(heads, heats)):
        r, c = divmod(i, ncols)
        ax = fig.add_axes(((side + c * pw + 0.05) / fw, (fh - head - (r + 1) * ph) / fh,
                           (pw - 0.1) / fw, (ph - 0.45) / fh))
        ax.imshow(overlay_rgb(canvas, hm, vmax=shared if normalize == "shared" else None), interpolation="nearest")
        for box in sample.target_boxes():
            ox, oy = offsets[box.image]
            ax.add_patch(Rectangle((ox + box.x0 - 0.5, oy + box.y0 - 0.5), box.x1 - box.x0, box.y1 - box.y0,
                                   fill=False, edgecolor=BOX_COLOUR, linewidth=1.6))
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"L{l} H{h}  RAM {ram[i]:.3f}  visual {vis[i]:.2f}"
        if spec_scores is not None:
            label += f"\nspec {score} {spec_scores[l, h]:.3f}"
        ax.set_title(label, fontsize=8)
    name = _short_name(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    q = sample.question if len(sample.question) <= 100 else sample.question[:97] + "..."
    fig.text(0.5, 1 - 0.08 / fh, title or f"attention over the image: {_clip(name, 60)}, sample "
             f"{getattr(sample, 'id', '?')}", ha="center", va="top", fontsize=10, weight="bold")
    fig.text(0.5, 1 - 0.34 / fh,
             f"rows={rows} ({n_rows} row{'s' if n_rows != 1 else ''}, averaged) · cyan box = target · "
             f"colour scale per {'panel' if normalize == 'head' else 'figure'}\nQ: {q}  A: {sample.answer}",
             ha="center", va="top", fontsize=7)
    out = _save(fig, path)
    return Overlay(out, heads, ram, vis, weights, q_rows[0].numpy(),
                   {"region": masks.target[0].numpy(), "visual": visual})


# ----------------------------------------------------------------------------- CLI


def add_plot_parser(subparsers) -> Any:
    """Add ``plot`` (``heatmap`` | ``overlay``) to a ``core-eval`` subparsers object; sets
    ``fn=run_plot``. Returns the ``plot`` parser."""
    import argparse

    from core_eval.loading import add_family_argument
    from core_eval.probes import add_probe_arguments

    p = subparsers.add_parser("plot", help="PNG plots: RAM heatmap of a head spec, attention overlays",
                              description="PNG plots of RAM scores and of where heads look.")
    sub = p.add_subparsers(dest="plot_cmd", required=True)
    hm = sub.add_parser("heatmap", help="layer x head heatmap of a spec's scores, selected heads outlined")
    hm.add_argument("spec", help="head spec (core-head-spec/v1, Retrieval Head JSON or DuoAttention TSV)")
    hm.add_argument("-o", "--out", required=True, help="PNG to write")
    hm.add_argument("--score", default="ram", help="score array to show (default: ram)")
    hm.add_argument("--title", default=None)
    ov = sub.add_parser("overlay", help="top heads' attention over one probe sample's image",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ov.add_argument("--model", required=True, help="checkpoint directory or cached model id")
    ov.add_argument("--spec", default=None, help="scored head spec: draws its top --k heads by --score")
    ov.add_argument("--heads", default=None, help="explicit heads instead of the spec's top k, LAYER:HEAD pairs "
                                                  "separated by ';' as in core_hf's heads=, e.g. '3:1;5:0'")
    ov.add_argument("--index", type=int, default=0, help="which sample of the probe set")
    add_probe_arguments(ov)
    add_family_argument(ov)
    ov.add_argument("--k", type=int, default=4, help=f"number of top heads (at most {MAX_PANELS})")
    ov.add_argument("--score", default="ram", help="spec score array that ranks the heads")
    ov.add_argument("--rows", default="answer", choices=list(ROWS), help="query rows whose attention is drawn")
    ov.add_argument("--normalize", default="head", choices=["head", "shared"], help="colour scale per panel or shared")
    ov.add_argument("--dtype", default=None)
    ov.add_argument("--device", default=None)
    ov.add_argument("-o", "--out", required=True, help="PNG to write")
    p.set_defaults(fn=run_plot)
    return p


def _parse_heads(text: str, shape=None) -> list[tuple[int, int]]:
    """``--heads``: the head-list syntax of every entry point (``3:1;5:0``, see
    :func:`core_eval.loading.parse_head_list`), checked against ``shape`` when given."""
    from core_eval.intervene import check_heads
    from core_eval.loading import parse_head_list

    heads = parse_head_list(text, what="--heads ")
    if not heads:
        raise ValueError(f"--heads {text!r} names no head; write e.g. '3:1;5:0'")
    if shape is not None:
        check_heads(heads, shape)  # range errors name the model's shape; the panels keep the given order
    return heads


def run_plot(args) -> int:
    """Run ``core-eval plot ...`` (arguments from :func:`add_plot_parser`)."""
    import json

    if args.plot_cmd == "heatmap":
        from core_eval.spec import load_head_spec

        spec = load_head_spec(args.spec)
        path = ram_heatmap(spec, args.out, score=args.score, title=args.title)
        print(f"wrote {path}: {args.score} heatmap, {len(spec.heads)} selected heads outlined")
        return 0

    from core_eval.loading import load
    from core_eval.probes import load_probe
    from core_eval.spec import load_head_spec

    if args.spec is None and args.heads is None:
        raise ValueError("pass --spec (draws its top --k heads) or --heads")
    if not 1 <= args.k <= MAX_PANELS:
        raise ValueError(f"--k {args.k} must be in 1..{MAX_PANELS}")
    if args.index < 0:
        raise ValueError(f"--index {args.index} must be >= 0")
    knobs = json.loads(args.knobs)
    # everything that can fail without weights fails first: head list, spec shape
    from core_eval.loading import plan

    shape = plan(args.model, heads="none", family=args.family).shape
    spec = load_head_spec(args.spec, shape=shape) if args.spec is not None else None
    heads = _parse_heads(args.heads, shape) if args.heads is not None else top_heads(spec, args.k, args.score)
    if len(heads) > MAX_PANELS:
        raise ValueError(f"--heads names {len(heads)} heads; an overlay figure holds at most {MAX_PANELS}")
    loaded = load(args.model, heads="none", dtype=args.dtype, device=args.device, family=args.family)
    samples = load_probe(args.probes, n=args.index + 1, seed=args.seed, image_root=args.image_root, **knobs)
    if args.index >= len(samples):
        raise ValueError(f"--index {args.index}: the probe set has {len(samples)} samples")
    ov = attention_overlay(loaded.model, loaded.processor, samples[args.index], heads, args.out, rows=args.rows,
                           spec=spec, score=args.score, normalize=args.normalize)
    desc = ", ".join(f"L{l}H{h} RAM {r:.3f}" for (l, h), r in zip(ov.heads, ov.ram))
    print(f"wrote {ov.path}: sample {samples[args.index].id}, rows={args.rows}: {desc}")
    return 0
