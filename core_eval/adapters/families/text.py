"""Text-only decoders (Llama, Qwen2/3, Mistral, Gemma 3 text): no visual tokens, causal mask."""

from __future__ import annotations

from core_eval.adapters.base import Family, TinyRecipe


def _tiny_llama(p):
    from core_eval.testing.recipe import LLAMA3_TEMPLATE, build_tokenizer, lm_kwargs, token_ids
    from transformers import LlamaConfig

    tok = build_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
         "<|finetune_right_pad_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", add_bos=True,
        chat_template=LLAMA3_TEMPLATE,
    )
    cfg = LlamaConfig(**lm_kwargs(p["lm"], tok, bos="<|begin_of_text|>", eos="<|eot_id|>",
                                   pad="<|finetune_right_pad_id|>"))
    return cfg, tok, token_ids(tok, "<|eot_id|>", "<|end_of_text|>")


def _tiny_qwen2(p):
    from core_eval.testing.recipe import CHATML_TEMPLATE, build_tokenizer, lm_kwargs, token_ids
    from transformers import Qwen2Config

    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                            pad="<|endoftext|>", chat_template=CHATML_TEMPLATE)
    cfg = Qwen2Config(**lm_kwargs(p["lm"], tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False))
    return cfg, tok, token_ids(tok, "<|im_end|>", "<|endoftext|>")


FAMILY = Family(
    name="text", model_types=("llama", "qwen2", "qwen3", "mistral", "gemma3_text"),
    layers="model.layers", text_config=None, vision=None, image_token_fields=(),
    notes="text-only decoders (no visual tokens)",
    tiny=(TinyRecipe("llama", _tiny_llama, "LlamaForCausalLM"), TinyRecipe("qwen2", _tiny_qwen2, "Qwen2ForCausalLM")),
)
