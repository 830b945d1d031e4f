"""A tiny LLaVA checkpoint with *planted* retrieval heads, and the probes they retrieve from.

Used by ``test_scoring.py`` to check that RAM scoring ranks heads that really attend to the
query-relevant region on top. Construction (all deterministic):

- Probe images: 32x32 px, black, with one white 8x8 cell of a 4x4 grid. Tiny LLaVA's CLIP
  processor keeps 32x32 (resize to shortest edge 32, centre crop 32) and cuts 8x8 patches, so the
  cell is exactly one visual token and the box of the cell maps to exactly that token.
- Vision tower made *local*: position embeddings, every layer's attention output projection and
  MLP output projection are zeroed, so each patch feature is a function of that patch's pixels
  only (all white patches identical, all black patches identical).
- LM layer 0, each planted head ``h``: constant query ``c * e_d`` (q_proj weight rows zeroed, the
  value put in q_proj's bias; needs ``attention_bias=True``) with ``d`` the last dimension of the
  first rotary half (the lowest-frequency RoPE pair with ``rope_theta = 1e6``, so RoPE barely
  rotates it). The key's ``d`` row is a direction ``a`` with ``a . x_white = 1`` and
  ``a . x = 0`` for every other layer-0 input seen on the probes (exact least-norm solve: layer-0
  inputs are position independent, so there are only a few dozen distinct vectors); the partner
  row ``d + head_dim / 2`` and all other key rows are zero. Logit on the white token:
  ``c * scaling``; on everything else: 0.
- The planted heads' value rows are zeroed, so the planted heads change nothing downstream.
- Optionally one planted head in LM layer 1. Its inputs depend on position and context, so the
  key row is a least-squares fit of ``1`` on white positions and ``0`` elsewhere over all prompt
  positions of the probes (checked afterwards, not assumed exact).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

IMAGE = 32
CELL = 8
GRID = IMAGE // CELL  # 4x4 cells = the 4x4 CLIP patches of tiny LLaVA
QUESTION = "Which cell of the grid is white?"


def make_probes(folder: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` grid images (white cell at a seeded random position) and a JSONL; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, GRID, (2,), generator=g))
        im = Image.new("RGB", (IMAGE, IMAGE), (0, 0, 0))
        im.paste((255, 255, 255), (c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL))
        name = f"img_{i:03d}.png"
        im.save(folder / name)
        rows.append({"id": f"p{i}", "image": name, "question": QUESTION, "answer": f"row {r} col {c}",
                     "boxes": [[c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL]], "meta": {"cell": [r, c]}})
    path = folder / "planted.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def white_positions(model, inputs, samples) -> torch.Tensor:
    """``(B, T)`` bool: the visual token of each sample's white cell, from the known geometry
    (16 image tokens per image, row-major over the 4x4 patch grid), not from core_eval's region
    mapping (which the tests check)."""
    ids = inputs["input_ids"]
    img = ids == model.config.image_token_index
    out = torch.zeros_like(img)
    for b, s in enumerate(samples):
        pos = img[b].nonzero().flatten()
        assert len(pos) == GRID * GRID, len(pos)
        r, c = s.meta["cell"]
        out[b, pos[r * GRID + c]] = True
    return out


def _layer_inputs(model, processor, samples, layer: int):
    """Post-input-layernorm hidden states of LM ``layer`` on the teacher-forced probe batch.

    Returns ``(states (N, D), is_white (N,))`` over the real (non-pad) positions of all samples.
    """
    from core_eval.prompting import encode_teacher_forced

    inputs, _, _ = encode_teacher_forced(processor, samples)
    grabbed = {}
    norm = model.model.language_model.layers[layer].input_layernorm
    hook = norm.register_forward_hook(lambda m, i, o: grabbed.__setitem__("h", o.detach()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    real = inputs["attention_mask"].bool()
    return grabbed["h"][real].double(), white_positions(model, inputs, samples)[real]


def _zero_vision_mixing(model) -> None:
    vt = model.model.vision_tower
    with torch.no_grad():
        vt.embeddings.position_embedding.weight.zero_()
        for layer in vt.vision_model.encoder.layers if hasattr(vt, "vision_model") else vt.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
            layer.mlp.fc2.weight.zero_()
            layer.mlp.fc2.bias.zero_()


def _plant(attn, head: int, a: torch.Tensor, c: float) -> None:
    """Constant query ``c * e_d`` and key row ``d`` = ``a`` for ``head``; value rows zeroed."""
    hd = attn.head_dim
    d = hd // 2 - 1  # last pair of the first rotate_half half: the lowest RoPE frequency
    rows = slice(head * hd, (head + 1) * hd)
    with torch.no_grad():
        attn.q_proj.weight[rows] = 0
        attn.q_proj.bias[rows] = 0
        attn.q_proj.bias[head * hd + d] = c
        attn.k_proj.weight[rows] = 0
        attn.k_proj.bias[rows] = 0
        attn.k_proj.weight[head * hd + d] = a.to(attn.k_proj.weight.dtype)
        attn.v_proj.weight[rows] = 0
        attn.v_proj.bias[rows] = 0


def build_planted(base_dir: Path, out_dir: Path, probes_jsonl: Path, *, layer0_heads=(1, 2), layer1_head=None,
                  c: float = 48.0, seed: int = 0) -> Path:
    """Save a planted checkpoint (weights + processor files) into ``out_dir``; returns it."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    from core_eval.probes import read_jsonl
    from core_eval.testing import load_processor

    config = AutoConfig.from_pretrained(base_dir)
    config.text_config.attention_bias = True
    config.text_config.rope_parameters = {"rope_type": "default", "rope_theta": 1_000_000.0}
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new attention biases are "missing" from the base checkpoint
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlavaForConditionalGeneration.from_pretrained(base_dir, config=config).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    processor = load_processor(base_dir)
    lm = model.model.language_model
    with torch.no_grad():  # the new biases: zero (missing from the base checkpoint)
        for layer in lm.layers:
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                b = getattr(layer.self_attn, proj).bias
                if b is not None:
                    b.zero_()
    _zero_vision_mixing(model)
    samples = read_jsonl(probes_jsonl)

    # layer 0: exact separation over the distinct layer-0 inputs
    states, white = _layer_inputs(model, processor, samples, 0)
    uniq, inv = torch.unique(states.round(decimals=5), dim=0, return_inverse=True)
    is_white = torch.zeros(len(uniq), dtype=torch.bool)
    is_white[inv[white]] = True
    assert is_white.sum() == 1, f"white tokens are not identical at layer 0 ({int(is_white.sum())} distinct)"
    assert len(uniq) < states.shape[1], f"{len(uniq)} distinct layer-0 inputs: no exact separation in dim {states.shape[1]}"
    a = torch.linalg.lstsq(uniq, is_white.double()[:, None], driver="gelsd").solution[:, 0]
    for h in layer0_heads:
        _plant(lm.layers[0].self_attn, h, a, c)

    if layer1_head is not None:
        states, white = _layer_inputs(model, processor, samples, 1)
        X = torch.cat([states, torch.ones(len(states), 1, dtype=states.dtype)], 1)
        sol = torch.linalg.lstsq(X, white.double()[:, None], driver="gelsd").solution[:, 0]
        attn = lm.layers[1].self_attn
        _plant(attn, layer1_head, sol[:-1], c)
        with torch.no_grad():
            attn.k_proj.bias[layer1_head * attn.head_dim + attn.head_dim // 2 - 1] = float(sol[-1])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in Path(base_dir).iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors") and not f.name.startswith("."):
            shutil.copy(f, out_dir / f.name)
    model.save_pretrained(out_dir)
    return out_dir


def eager_white_mass(model_dir: Path, probes_jsonl: Path) -> torch.Tensor:
    """Independent check: ``(L, H)`` mean attention mass on the white-cell token over the answer
    rows, from eager attention with ``output_attentions=True`` (no core_eval capture or region
    code)."""
    from transformers import LlavaForConditionalGeneration

    from core_eval.probes import read_jsonl
    from core_eval.prompting import encode_teacher_forced
    from core_eval.testing import load_processor

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager").eval()
    processor = load_processor(model_dir)
    samples = read_jsonl(probes_jsonl)
    inputs, amask, _ = encode_teacher_forced(processor, samples)
    target = white_positions(model, inputs, samples)
    with torch.no_grad():
        att = model(**inputs, output_attentions=True).attentions  # L x (B, H, T, T)
    per_sample = []
    for b in range(len(samples)):
        rows = amask[b].nonzero().flatten() - 1
        m = torch.stack([A[b][:, rows][:, :, target[b]].sum(-1).mean(-1) for A in att])  # (L, H)
        per_sample.append(m)
    return torch.stack(per_sample).mean(0)
