"""Tests for the offline tiny-model factory (core_eval.testing)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import ALL_FAMILIES, TEXT_FAMILIES, VLM_FAMILIES
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from core_eval.testing import (
    EXAMPLE_IMAGE_TOKENS,
    build_tiny,
    example_inputs,
    example_messages,
    load_tiny,
    synthetic_image,
    tiny_model_dir,
)

# family -> (processor class, image processor class, image placeholder string, kv heads)
EXPECTED = {
    "llava": ("LlavaProcessor", "CLIPImageProcessor", "<image>", 4),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLImageProcessor", "<|image_pad|>", 2),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "<|image_pad|>", 2),
    "idefics3": ("Idefics3Processor", "Idefics3ImageProcessor", "<image>", 4),
    "internvl": ("InternVLProcessor", "GotOcr2ImageProcessor", "<IMG_CONTEXT>", 2),
    "gemma3": ("Gemma3Processor", "Gemma3ImageProcessor", "<image_soft_token>", 2),
    "paligemma": ("PaliGemmaProcessor", "SiglipImageProcessor", "<image>", 2),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen2VLImageProcessor", "<|image_pad|>", 2),
    "qwen3_vl_moe": ("Qwen3VLProcessor", "Qwen2VLImageProcessor", "<|image_pad|>", 2),
    "glm4v": ("Glm4vProcessor", "Glm4vImageProcessor", "<|image|>", 2),
    "glm4v_moe": ("Glm4vProcessor", "Glm4vImageProcessor", "<|image|>", 2),
    "llava_next": ("LlavaNextProcessor", "LlavaNextImageProcessor", "<image>", 4),
    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionImageProcessor", "<image>", 2),
    "idefics2": ("Idefics2Processor", "Idefics2ImageProcessor", "<image>", 2),
    "smolvlm": ("SmolVLMProcessor", "SmolVLMImageProcessor", "<image>", 4),
    "internvl3_5": ("InternVLProcessor", "GotOcr2ImageProcessor", "<IMG_CONTEXT>", 2),
    "llama": (None, None, None, 2),
    "qwen2": (None, None, None, 2),
}
MODEL_CLASS = {
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "glm4v": "Glm4vForConditionalGeneration",
    "glm4v_moe": "Glm4vMoeForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "idefics2": "Idefics2ForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
    "internvl3_5": "InternVLForConditionalGeneration",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
#: Visual tokens per example image in a prompt with several images, where that differs (OneVision: base grid
#: + newline only).
MULTI_IMAGE_TOKENS = {"llava_onevision": 10}


def test_family_constants():
    assert set(VLM_FAMILIES) | set(TEXT_FAMILIES) == set(ALL_FAMILIES) == set(EXPECTED)
    assert {"llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "internvl", "gemma3"} <= set(VLM_FAMILIES)
    assert set(EXAMPLE_IMAGE_TOKENS) == set(VLM_FAMILIES)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    """Load each family once per module through the Auto classes."""
    cache = {}

    def get(family):
        if family not in cache:
            d = tiny_dir(family)
            if family in VLM_FAMILIES:
                cache[family] = (AutoModelForImageTextToText.from_pretrained(d).eval(), AutoProcessor.from_pretrained(d))
            else:
                cache[family] = (AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d))
        return cache[family]

    return get


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_config_and_tokenizer(family, loaded):
    model, proc = loaded(family)
    proc_cls, img_cls, image_token, kv = EXPECTED[family]
    assert type(model).__name__ == MODEL_CLASS[family]
    tok = proc.tokenizer if family in VLM_FAMILIES else proc
    if proc_cls:
        assert type(proc).__name__ == proc_cls
        assert type(proc.image_processor).__name__ == img_cls
    text = model.config.get_text_config()
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads, text.hidden_size) == (
        3, 4, kv, 64)
    assert getattr(text, "head_dim", None) in (None, 16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"
    assert text.vocab_size >= len(tok)
    assert max(tok.get_vocab().values()) < text.vocab_size
    # Special-token ids agree between config, generation config and tokenizer.
    assert text.eos_token_id == tok.eos_token_id
    assert text.pad_token_id == tok.pad_token_id is not None
    assert text.bos_token_id == tok.bos_token_id
    assert tok.eos_token_id in (model.generation_config.eos_token_id if isinstance(
        model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])
    if image_token:
        image_id = tok.convert_tokens_to_ids(image_token)
        assert model.config.image_token_id == image_id
        assert tok.encode(image_token, add_special_tokens=False) == [image_id]
        # Gemma3Processor.image_token_id is the BOI token (the text placeholder), as upstream.
        assert proc.image_token_id == (tok.boi_token_id if family == "gemma3" else image_id)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        ids = tok.convert_tokens_to_ids(["<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
        assert [model.config.video_token_id, model.config.vision_start_token_id,
                model.config.vision_end_token_id] == ids
    if family == "gemma3":
        assert model.config.boi_token_id == tok.convert_tokens_to_ids("<start_of_image>") == tok.boi_token_id
        assert model.config.eoi_token_id == tok.convert_tokens_to_ids("<end_of_image>") == tok.eoi_token_id
        assert "sliding_attention" in text.layer_types and "full_attention" in text.layer_types
        assert text.sliding_window >= 4096
    if family == "internvl":
        assert tok.start_image_token == "<img>" and tok.end_image_token == "</img>"
    # Any text tokenizes and round-trips.
    s = "Grüße, 世界! <b>"
    assert tok.decode(tok.encode(s, add_special_tokens=False)) == s


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_forward_and_generate_batch2_left_padded(family, loaded):
    model, proc = loaded(family)
    batch = example_inputs(family, batch=2, padding_side="left", processor=proc)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 2
    assert mask[:, -1].all() and not mask[0, 0]  # left padding, first prompt is the shorter one
    assert mask[0].sum() < mask[1].sum()
    if family in VLM_FAMILIES:
        n_img = (ids == model.config.image_token_id).sum(-1).tolist()
        assert n_img == [EXAMPLE_IMAGE_TOKENS[family]] * 2
        assert 4 <= EXAMPLE_IMAGE_TOKENS[family] <= 64
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (*ids.shape, model.config.get_text_config().vocab_size)
    assert torch.isfinite(out.logits[mask.bool()]).all()
    gen = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert ids.shape[1] < gen.shape[1] <= ids.shape[1] + 3
    assert torch.equal(gen[:, : ids.shape[1]], ids)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_padding_matches_unpadded_and_eager_matches_sdpa(family, loaded, tiny_dir):
    model, proc = loaded(family)
    batch = example_inputs(family, batch=2, processor=proc)
    single = example_inputs(family, batch=1, processor=proc)  # = row 0 of the batch, unpadded
    with torch.no_grad():
        lb = model(**batch).logits
        ls = model(**single).logits
        eager = load_tiny(tiny_dir(family), attn_implementation="eager")[0]
        le = eager(**batch).logits
    assert ls.shape[1] == int(batch["attention_mask"][0].sum())
    torch.testing.assert_close(lb[0, -ls.shape[1]:], ls[0], atol=1e-5, rtol=1e-4)
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(lb[m], le[m], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_token_count_is_what_the_model_consumes(family, loaded):
    model, proc = loaded(family)
    batch = example_inputs(family, batch=1, processor=proc)
    ids = batch["input_ids"]
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[(ids[0] == model.config.image_token_id).nonzero()[0, 0]] = False  # drop one placeholder
    broken = {k: (v[:, keep] if k in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids") else v)
              for k, v in batch.items()}
    with pytest.raises(ValueError, match="[Ii]mage features and image tokens do not match"), torch.no_grad():
        model(**broken)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_multi_image_and_text_only_prompts(family, loaded):
    model, proc = loaded(family)
    if family == "paligemma":  # the real PaliGemmaProcessor refuses text-only prompts
        with pytest.raises(ValueError, match="`images` are expected"):
            example_inputs(family, batch=2, n_images=0, processor=proc)
    for n in (0, 2) if family != "paligemma" else (2,):
        batch = example_inputs(family, batch=2, n_images=n, processor=proc)
        n_img = (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist()
        per_image = MULTI_IMAGE_TOKENS.get(family, EXAMPLE_IMAGE_TOKENS[family]) if n > 1 else None
        per_image = per_image or EXAMPLE_IMAGE_TOKENS[family]
        assert n_img == [n * per_image] * 2
        with torch.no_grad():
            assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_chat_template(family, loaded):
    _, proc = loaded(family)
    tok = proc.tokenizer if family in VLM_FAMILIES else proc
    if family == "paligemma":  # like the real checkpoints: no chat template, the question is the prompt
        from types import SimpleNamespace

        from core_eval.prompting import prompt_text

        assert not getattr(proc, "chat_template", None) and not tok.chat_template
        assert prompt_text(proc, SimpleNamespace(question="Hello there", images=[])) == "Hello there"
        return
    plain = [{"role": "user", "content": "Hello there"}]
    listed = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    a = proc.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    b = proc.apply_chat_template(listed, tokenize=False, add_generation_prompt=True)
    c = proc.apply_chat_template(plain, tokenize=False, add_generation_prompt=False)
    assert a == b and "Hello there" in a
    assert a.startswith(c) and len(a) > len(c)
    convo = plain + [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Again"}]
    text = proc.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert text.index("Hello there") < text.index("Hi") < text.index("Again")
    if family in VLM_FAMILIES:
        with_image = proc.apply_chat_template(example_messages("What?", 2), tokenize=False)
        placeholder = {"llava": "<image>", "idefics3": "<image>", "internvl": "<IMG_CONTEXT>",
                       "gemma3": "<start_of_image>", "llava_next": "<image>",
                       "llava_onevision": "<image>",
                       "idefics2": "<image>", "smolvlm": "<image>", "internvl3_5": "<IMG_CONTEXT>",
                       }.get(family, "<|vision_start|><|image_pad|><|vision_end|>")
        if family in ("glm4v", "glm4v_moe"):
            placeholder = "<|begin_of_image|><|image|><|end_of_image|>"
        assert with_image.count(placeholder) == 2
        # The processor's own tokenize path, with the image inside the message.
        msgs = [{"role": "user", "content": [{"type": "image", "image": synthetic_image(0)},
                                             {"type": "text", "text": "What?"}]}]
        out = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
        assert "pixel_values" in out
        ids = out["input_ids"][0]
        image_id = tok.convert_tokens_to_ids(EXPECTED[family][2])
        assert int((ids == image_id).sum()) == EXAMPLE_IMAGE_TOKENS[family]
    else:
        ids = torch.tensor(proc.apply_chat_template(plain, tokenize=True, add_generation_prompt=True,
                                                    return_dict=True)["input_ids"])
    if tok.bos_token_id is not None:  # exactly one BOS, at the start
        assert ids[0] == tok.bos_token_id and int((ids == tok.bos_token_id).sum()) == 1


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_same_seed_bitwise_identical(family, tmp_path):
    a = load_file(str(build_tiny(family, tmp_path / "a", seed=3) / "model.safetensors"))
    b = load_file(str(build_tiny(family, tmp_path / "b", seed=3) / "model.safetensors"))
    c = load_file(str(build_tiny(family, tmp_path / "c", seed=4) / "model.safetensors"))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in a.values())
    random = [k for k in a if a[k].unique().numel() > 1]  # norms, biases, layer scales are constant
    assert len(random) > len(a) // 3
    assert all(not torch.equal(a[k], c[k]) for k in random)


def test_overrides(tmp_path):
    d = build_tiny("llama", tmp_path / "l", layers=2, heads=8, kv_heads=2, hidden=128, intermediate=96)
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]) == (2, 8, 2, 128, 96, 16)
    d = build_tiny("qwen2_vl", tmp_path / "q", num_attention_heads=2, num_hidden_layers=1, hidden_size=48)
    model, _ = load_tiny(d)
    text = model.config.get_text_config()
    assert (text.num_attention_heads, text.num_key_value_heads, text.num_hidden_layers) == (2, 1, 1)
    assert sum(text.rope_parameters["mrope_section"]) == 48 // 2 // 2
    with torch.no_grad():
        model(**example_inputs(d))
    d = build_tiny("gemma3", tmp_path / "g", sliding_window=8, layer_types=["sliding_attention", "full_attention",
                                                                            "sliding_attention"])
    text = load_tiny(d)[0].config.get_text_config()
    assert text.sliding_window == 8 and text.layer_types[1] == "full_attention"
    with pytest.raises(TypeError):
        build_tiny("llama", tmp_path / "x", bogus=1)
    with pytest.raises(TypeError):
        build_tiny("llava", tmp_path / "y", sliding_window=8)
    with pytest.raises(ValueError):
        build_tiny("nope", tmp_path / "z")


def test_tiny_model_dir_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORE_EVAL_TINY_CACHE", str(tmp_path))
    d1 = tiny_model_dir("qwen2")
    assert d1.parent == tmp_path and (d1 / "model.safetensors").is_file()
    stamp = (d1 / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir("qwen2") == d1
    assert (d1 / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    d2 = tiny_model_dir("qwen2", seed=1)
    assert d2 != d1
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    # A half-written directory under the final name (no completion marker) is replaced.
    (d1 / ".core_eval_complete").unlink()
    (d1 / "model.safetensors").unlink()
    assert tiny_model_dir("qwen2") == d1 and (d1 / "model.safetensors").is_file()
