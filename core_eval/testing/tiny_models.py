"""Offline factory of tiny random models with real processors, saved like real checkpoints.

``build_tiny(family, out_dir)`` writes a directory that loads exactly like a Hub checkpoint:
``AutoProcessor`` + ``AutoModelForImageTextToText`` for the vision-language families,
``AutoTokenizer`` + ``AutoModelForCausalLM`` for the text-only ones. ``tiny_model_dir`` builds
once into a cache. Nothing is downloaded.

Language model defaults: hidden 64, 3 layers, 4 heads (head_dim 16), intermediate 128,
vocab = tokenizer size rounded up to a multiple of 64, float32. GQA (2 kv heads) for
qwen2_vl, qwen2_5_vl, internvl, gemma3, llama, qwen2; MHA (4 kv heads) for llava and
idefics3. Vision towers: hidden 32, 2 layers.

Overrides (``build_tiny(..., **overrides)``; short aliases in brackets):

- ``num_hidden_layers`` [layers], ``num_attention_heads`` [heads],
  ``num_key_value_heads`` [kv_heads], ``hidden_size`` [hidden],
  ``intermediate_size`` [intermediate]: language model shape. ``head_dim`` is always
  ``hidden_size // num_attention_heads``. If only ``heads`` is given, kv heads follow the
  family's scheme (MHA: = heads, GQA: heads // 2).
- ``initializer_range`` [init_std]: init std of all weights (default 0.02).
- ``max_position_embeddings`` (default 4096).
- ``sliding_window`` (gemma3; default 4096, so it never bites at test lengths) and
  ``layer_types`` (gemma3; default: every third layer full, the others sliding).
- ``vision_layers``: number of vision-tower layers (default 2).

Processors are the families' real classes (CLIP, Qwen2-VL, Idefics3, GotOcr2, Gemma3 image
processors; Qwen2-VL/InternVL video processors), all torchvision-backed in transformers 5.x,
so building needs torchvision. Visual tokens per image: see ``inputs.EXAMPLE_IMAGE_TOKENS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import _tokenizer as T

FACTORY_VERSION = "1"

VLM_FAMILIES: tuple[str, ...] = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "internvl", "gemma3")
TEXT_FAMILIES: tuple[str, ...] = ("llama", "qwen2")
FAMILIES: tuple[str, ...] = VLM_FAMILIES + TEXT_FAMILIES

_GQA = {"qwen2_vl", "qwen2_5_vl", "internvl", "gemma3", "llama", "qwen2"}

_ALIASES = {
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "init_std": "initializer_range",
}
_KEYS = {
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "initializer_range",
    "max_position_embeddings",
    "sliding_window",
    "layer_types",
    "vision_layers",
}

# Visual geometry (kept small: 4..64 visual tokens per image).
LLAVA_IMAGE, LLAVA_PATCH = 32, 8  # 16 tokens (CLS dropped)
QWEN_PATCH, QWEN_MERGE = 14, 2  # tokens = (H/28)*(W/28), pixels in [28*28, 112*112] -> 1..16
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 28 * 28, 112 * 112
IDEFICS3_IMAGE, IDEFICS3_PATCH, IDEFICS3_SCALE = 64, 8, 2  # 64 patches / 2**2 = 16 tokens
INTERNVL_TILE, INTERNVL_PATCH, INTERNVL_MAX_TILES = 32, 8, 4  # 4 tokens per tile, <= 4 tiles + thumbnail
GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_MM_TOKENS = 64, 8, 16  # 8x8 patches avg-pooled to 4x4


# --------------------------------------------------------------------------- helpers
def _resolve_overrides(family: str, overrides: dict[str, Any]) -> dict[str, Any]:
    o: dict[str, Any] = {}
    for k, v in overrides.items():
        k = _ALIASES.get(k, k)
        if k not in _KEYS:
            raise TypeError(f"build_tiny: unknown override {k!r}; allowed: {sorted(_KEYS | set(_ALIASES))}")
        if k in ("sliding_window", "layer_types") and family != "gemma3":
            raise TypeError(f"build_tiny: {k!r} is only supported for gemma3")
        o[k] = v
    heads = o.get("num_attention_heads", 4)
    default_kv = max(1, heads // 2) if family in _GQA else heads
    lm = {
        "hidden_size": o.get("hidden_size", 64),
        "num_hidden_layers": o.get("num_hidden_layers", 3),
        "num_attention_heads": heads,
        "num_key_value_heads": o.get("num_key_value_heads", default_kv),
        "intermediate_size": o.get("intermediate_size", 128),
        "initializer_range": o.get("initializer_range", 0.02),
        "max_position_embeddings": o.get("max_position_embeddings", 4096),
    }
    if lm["hidden_size"] % heads or heads % lm["num_key_value_heads"]:
        raise ValueError(f"build_tiny: incompatible shape {lm}")
    lm["head_dim"] = lm["hidden_size"] // heads
    extra = {k: o[k] for k in ("sliding_window", "layer_types") if k in o}
    return {"lm": lm, "vision_layers": o.get("vision_layers", 2), **extra}


def _vocab_size(tok) -> int:
    return -(-len(tok) // 64) * 64


def _ids(tok, *tokens: str) -> list[int]:
    out = [tok.convert_tokens_to_ids(t) for t in tokens]
    assert all(isinstance(i, int) and i >= 0 for i in out), (tokens, out)
    return out


def _lm_common(
    lm: dict, tok, *, bos: str | None, eos: str, pad: str, head_dim: bool = True, tie: bool = False
) -> dict:
    d = {k: v for k, v in lm.items() if head_dim or k != "head_dim"}
    d.update(
        vocab_size=_vocab_size(tok),
        bos_token_id=tok.convert_tokens_to_ids(bos) if bos else None,
        eos_token_id=tok.convert_tokens_to_ids(eos),
        pad_token_id=tok.convert_tokens_to_ids(pad),
        tie_word_embeddings=tie,
    )
    return d


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2  # Qwen2-VL's [16, 24, 24] for head_dim 128, scaled down
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _vision(hidden: int = 32, layers: int = 2, heads: int = 4) -> dict:
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads)


# --------------------------------------------------------------------------- families
def _llava(p):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    tok = T.build_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
        named={"image_token": "<image>"}, chat_template=T.LLAVA_TEMPLATE,
    )
    n_tokens = (LLAVA_IMAGE // LLAVA_PATCH) ** 2
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": LLAVA_IMAGE}, crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=T.LLAVA_TEMPLATE,
    )
    text = LlamaConfig(**_lm_common(p["lm"], tok, bos="<s>", eos="</s>", pad="<pad>"))
    vision = CLIPVisionConfig(
        **_vision(layers=p["vision_layers"]), image_size=LLAVA_IMAGE, patch_size=LLAVA_PATCH, projection_dim=32
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=_ids(tok, "<image>")[0],
        image_seq_length=n_tokens, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return config, processor, _ids(tok, "</s>")


_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


def _qwen_vl(p, v25: bool):
    if v25:
        from transformers import Qwen2_5_VLConfig as Cfg
        from transformers import Qwen2_5_VLProcessor as Proc
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig as TextCfg
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig as VisCfg
    else:
        from transformers import Qwen2VLConfig as Cfg
        from transformers import Qwen2VLProcessor as Proc
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig as TextCfg
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig as VisCfg
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = T.build_tokenizer(
        _QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=T.QWEN_TEMPLATE
    )
    geometry = dict(patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, temporal_patch_size=2)
    size = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS}
    processor = Proc(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(size=dict(size), **geometry),
        chat_template=T.QWEN_TEMPLATE,
    )
    lm = p["lm"]
    text = TextCfg(
        **_lm_common(lm, tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False),
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                         "mrope_section": _mrope_section(lm["head_dim"])},
    )
    vis_common = dict(depth=p["vision_layers"], num_heads=2, patch_size=QWEN_PATCH,
                      spatial_merge_size=QWEN_MERGE, temporal_patch_size=2)
    if v25:
        vision = VisCfg(**vis_common, hidden_size=32, intermediate_size=64, out_hidden_size=lm["hidden_size"],
                        window_size=56, fullatt_block_indexes=[p["vision_layers"] - 1])
    else:
        vision = VisCfg(**vis_common, embed_dim=32, mlp_ratio=2, hidden_size=lm["hidden_size"])
    img, vid, vs, ve = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    config = Cfg(text_config=text, vision_config=vision, image_token_id=img, video_token_id=vid,
                 vision_start_token_id=vs, vision_end_token_id=ve)
    return config, processor, _ids(tok, "<|im_end|>", "<|endoftext|>")


def _idefics3(p):
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = T.build_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<fake_token_around_image>", "<image>",
         "<end_of_utterance>", "<global-img>", *rows],
        bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>", add_bos=True,
        chat_template=T.IDEFICS3_TEMPLATE,
    )
    n_tokens = (IDEFICS3_IMAGE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE**2
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": IDEFICS3_IMAGE}, max_image_size={"longest_edge": IDEFICS3_IMAGE},
        do_image_splitting=False,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=n_tokens,
                                  chat_template=T.IDEFICS3_TEMPLATE)
    text = LlamaConfig(**_lm_common(p["lm"], tok, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>"))
    vision = Idefics3VisionConfig(**_vision(layers=p["vision_layers"]), image_size=IDEFICS3_IMAGE,
                                  patch_size=IDEFICS3_PATCH)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=IDEFICS3_SCALE,
                            image_token_id=_ids(tok, "<image>")[0], pad_token_id=_ids(tok, "<pad>")[0])
    return config, processor, _ids(tok, "<end_of_utterance>", "<|end_of_text|>")


def _internvl(p):
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, Qwen2Config
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    tok = T.build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        named={"start_image_token": "<img>", "end_image_token": "</img>",
               "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        chat_template=T.INTERNVL_TEMPLATE,
    )
    per_tile = (INTERNVL_TILE // INTERNVL_PATCH) ** 2 // 4  # downsample_ratio 0.5
    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=tile, crop_to_patches=True, min_patches=1,
                                              max_patches=INTERNVL_MAX_TILES),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=dict(tile)),
        image_seq_length=per_tile,
        chat_template=T.INTERNVL_TEMPLATE,
    )
    text = Qwen2Config(**_lm_common(p["lm"], tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False,
                                     tie=True))
    vision = InternVLVisionConfig(**_vision(layers=p["vision_layers"]), image_size=[INTERNVL_TILE] * 2,
                                  patch_size=[INTERNVL_PATCH] * 2)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=_ids(tok, "<IMG_CONTEXT>")[0],
                            image_seq_length=per_tile, downsample_ratio=0.5, vision_feature_layer=-1,
                            tie_word_embeddings=True)
    return config, processor, _ids(tok, "<|im_end|>", "<|endoftext|>")


def _gemma3(p):
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor, SiglipVisionConfig
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

    tok = T.build_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
         "<end_of_image>", "<image_soft_token>"],
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        chat_template=T.GEMMA3_TEMPLATE,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE}),
        tokenizer=tok, image_seq_length=GEMMA3_MM_TOKENS, chat_template=T.GEMMA3_TEMPLATE,
    )
    lm = p["lm"]
    n = lm["num_hidden_layers"]
    layer_types = p.get("layer_types")
    if layer_types is None:  # every third layer full; at least one full layer if n >= 2
        layer_types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(n)]
        if n >= 2 and "full_attention" not in layer_types:
            layer_types[-1] = "full_attention"
    text = Gemma3TextConfig(
        **_lm_common(lm, tok, bos="<bos>", eos="<eos>", pad="<pad>", tie=True),
        query_pre_attn_scalar=lm["head_dim"],
        sliding_window=p.get("sliding_window", 4096),
        layer_types=list(layer_types),
    )
    vision = SiglipVisionConfig(**_vision(layers=p["vision_layers"]), image_size=GEMMA3_IMAGE,
                                patch_size=GEMMA3_PATCH, vision_use_head=False)
    boi, eoi, img = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=GEMMA3_MM_TOKENS,
                          boi_token_index=boi, eoi_token_index=eoi, image_token_index=img,
                          tie_word_embeddings=True)
    return config, processor, _ids(tok, "<eos>", "<end_of_turn>")


def _llama(p):
    from transformers import LlamaConfig

    tok = T.build_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
         "<|finetune_right_pad_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", add_bos=True,
        chat_template=T.LLAMA3_TEMPLATE,
    )
    cfg = LlamaConfig(**_lm_common(p["lm"], tok, bos="<|begin_of_text|>", eos="<|eot_id|>",
                                   pad="<|finetune_right_pad_id|>"))
    return cfg, tok, _ids(tok, "<|eot_id|>", "<|end_of_text|>")


def _qwen2(p):
    from transformers import Qwen2Config

    tok = T.build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                            pad="<|endoftext|>", chat_template=T.CHATML_TEMPLATE)
    cfg = Qwen2Config(**_lm_common(p["lm"], tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False))
    return cfg, tok, _ids(tok, "<|im_end|>", "<|endoftext|>")


_BUILDERS = {
    "llava": _llava,
    "qwen2_vl": lambda p: _qwen_vl(p, v25=False),
    "qwen2_5_vl": lambda p: _qwen_vl(p, v25=True),
    "idefics3": _idefics3,
    "internvl": _internvl,
    "gemma3": _gemma3,
    "llama": _llama,
    "qwen2": _qwen2,
}


def _model_class(family: str):
    import transformers as tf

    return {
        "llava": tf.LlavaForConditionalGeneration,
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "idefics3": tf.Idefics3ForConditionalGeneration,
        "internvl": tf.InternVLForConditionalGeneration,
        "gemma3": tf.Gemma3ForConditionalGeneration,
        "llama": tf.LlamaForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
    }[family]


# --------------------------------------------------------------------------- public API
def build_tiny(family: str, out_dir: str | os.PathLike, *, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny random ``family`` model with its processor and save both into ``out_dir``.

    Weights are float32 and bit-identical for the same seed and overrides. See the module
    docstring for the accepted ``overrides``. Returns ``Path(out_dir)``.
    """
    from transformers import GenerationConfig

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    params = _resolve_overrides(family, overrides)
    config, processor, eos_ids = _BUILDERS[family](params)
    for c in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if c is not None:
            c.dtype = torch.float32
    init_std = params["lm"]["initializer_range"]
    config.initializer_range = init_std
    if getattr(config, "vision_config", None) is not None:
        config.vision_config.initializer_range = init_std

    text_cfg = config.get_text_config()
    gen = GenerationConfig(
        bos_token_id=text_cfg.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=text_cfg.pad_token_id,
        do_sample=False,
    )

    cls = _model_class(family)
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
    finally:
        torch.set_default_dtype(prev_dtype)
    model.eval()
    model.generation_config = gen

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@contextlib.contextmanager
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _source_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_root() -> Path:
    """Cache directory: ``$CORE_EVAL_TINY_CACHE`` or ``~/.cache/core_eval/tiny``."""
    env = os.environ.get("CORE_EVAL_TINY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "core_eval" / "tiny"


def cache_key(family: str, *, seed: int = 0, **overrides: Any) -> str:
    """Directory name: family, factory version, transformers version, source hash, args."""
    import transformers

    key = f"{family}-f{FACTORY_VERSION}-tf{transformers.__version__}-{_source_hash()}"
    if seed or overrides:
        args = repr((seed, sorted(overrides.items())))
        key += "-" + hashlib.sha256(args.encode()).hexdigest()[:10]
    return key


_MARKER = ".core_eval_complete"


def tiny_model_dir(family: str, *, seed: int = 0, **overrides: Any) -> Path:
    """Return a cached ``build_tiny(family, ...)`` directory, building it on first use.

    Builds into a temporary sibling and renames it into place atomically, so concurrent or
    killed builds never leave a half-written model under the final name.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    root = cache_root()
    final = root / cache_key(family, seed=seed, **overrides)
    if (final / _MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        build_tiny(family, tmp, seed=seed, **overrides)
        (tmp / _MARKER).write_text(final.name)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _MARKER).is_file():  # a broken leftover, not a concurrent winner
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _clean_stale_tmp(root: Path, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def is_vlm(family: str) -> bool:
    """True for the image-text families."""
    return family in VLM_FAMILIES
