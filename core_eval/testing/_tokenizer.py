"""Offline byte-level tokenizer and family-style chat templates for the tiny models.

The vocabulary is the 256 GPT-2 byte symbols (no merges, so any text tokenizes, one
token per UTF-8 byte) followed by the family's special tokens in the order given.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


N_BYTE_TOKENS = 256


def build_tokenizer(
    specials: list[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    unk: str | None = None,
    add_bos: bool = False,
    named: dict[str, str] | None = None,
    chat_template: str | None = None,
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer; ``specials`` get ids 256, 257, ... in order.

    ``named`` adds model-specific named special tokens (e.g. ``{"image_token": "<image>"}``)
    that become tokenizer attributes (``tok.image_token``, ``tok.image_token_id``) and are
    saved in ``tokenizer_config.json``.
    """
    byte_map = _bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(N_BYTE_TOKENS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:  # ids must be contiguous and in the given order
        assert tok.token_to_id(s) is not None
    kwargs = dict(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        add_bos_token=add_bos,
        add_eos_token=False,
        padding_side=padding_side,
        model_max_length=4096,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )
    if named:
        kwargs["extra_special_tokens"] = dict(named)
    return PreTrainedTokenizerFast(**{k: v for k, v in kwargs.items() if v is not None})


# --------------------------------------------------------------------------- chat templates
# All templates accept ``content`` as a plain string or as a list of {"type": "image"} /
# {"type": "text", "text": ...} items. As in the real checkpoints, the Gemma3, Idefics3 and
# Llama-3 templates start with the BOS token (tokenize the rendered text with
# add_special_tokens=False, as ``ProcessorMixin.apply_chat_template`` does); LLaVA's does not
# (its tokenizer adds BOS); Qwen/InternVL have no BOS.

_IS_IMAGE = "(item['type'] == 'image' or 'image' in item or 'image_url' in item)"

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] + '\n' }}"
    "{% else %}{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + '\n' }}{% endfor %}{% endif %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if " + _IS_IMAGE + " %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if " + _IS_IMAGE + " %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if " + _IS_IMAGE + " %}<IMG_CONTEXT>\n"
    "{% elif item['type'] == 'video' or 'video' in item %}<video>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% elif " + _IS_IMAGE + " %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if " + _IS_IMAGE + " %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] | trim }}{% endfor %}{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL (Instruct): the Qwen2-VL layout without a default system turn (the real template adds none).
_QWEN_DEFAULT_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
                        "assistant.<|im_end|>\n{% endif %}")
assert _QWEN_DEFAULT_SYSTEM in QWEN_TEMPLATE
QWEN3_VL_TEMPLATE = QWEN_TEMPLATE.replace(_QWEN_DEFAULT_SYSTEM, "")
# GLM-4.1V / GLM-4.5V: "[gMASK]<sop>" prefix (no BOS token), "<|role|>\n" turns, no end-of-turn token
# (the next role token ends a turn; generation stops on <|user|> / <|observation|> / <|endoftext|>).
GLM4V_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if " + _IS_IMAGE + " %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# LLaVA-OneVision (llava-hf *-ov-hf): images first, then videos, then the text, each turn "<|im_start|>role ".
ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if " + _IS_IMAGE + " %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' or 'video' in item %}{{ '<video>' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ '\n' + item['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Idefics2: the Idefics3 turn layout without a BOS in the template (its Llama-style tokenizer adds BOS).
IDEFICS2_TEMPLATE = IDEFICS3_TEMPLATE.removeprefix("<|begin_of_text|>")

# SmolVLM: the same turns after its BOS <|im_start|>, with {"type": "video"} items written as <video>.
_IMAGE_ITEM = "{{ '<image>' }}{% endif %}"
SMOLVLM_TEMPLATE = "<|im_start|>" + IDEFICS2_TEMPLATE.replace(
    _IMAGE_ITEM, "{{ '<image>' }}{% elif item['type'] == 'video' %}{{ '<video>' }}{% endif %}")
assert IDEFICS2_TEMPLATE != IDEFICS3_TEMPLATE and _IMAGE_ITEM in IDEFICS2_TEMPLATE
