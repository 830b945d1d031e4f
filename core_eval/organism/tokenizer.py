"""The organism's own tokenizer and chat template.

Two pre-tokenizations, both byte-level BPE (any text tokenizes) with merges learnt from probe
text:

- ``"v1"``, the shipped weights' tokenizer: GPT-2's byte-level regex, which glues a leading space
  to the next word. A key is then ``V`` at the start of a table line but ``ĠV`` in the question,
  a value ``Ġ1`` in the table but ``1`` as the answer, so a content lookup must learn one pairing
  per key instead of one "same token" match;
- ``"v2"``: every whitespace character is a token of its own and words, digit runs and
  punctuation runs are split apart before the BPE, so a key or value is the same token sequence
  wherever it stands (table line, question, answer after ``ASSISTANT:``).

The chat template is LLaVA's (``USER: <image>\\n... ASSISTANT:``, the tokenizer adds BOS); with
``image_labels`` each image is written ``Image k: <image>`` (k counted over the conversation), as
Qwen2-VL's ``Picture k:``.
"""

from __future__ import annotations

SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
PRETOKENIZERS = ("v1", "v2")

# one image placeholder per image entry, then the text entries, as LLaVA's template
_IMAGE = "{{ '<image>\\n' }}"
_LABELLED = "{% set ns.k = ns.k + 1 %}{{ 'Image ' ~ ns.k ~ ': <image>\\n' }}"
_TEMPLATE = (
    "{% set ns = namespace(k=0) %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% if m['content'] is string %}{{ m['content'] + '\\n' }}"
    "{% else %}{% for it in m['content'] if it['type'] == 'text' %}{{ it['text'] + '\\n' }}{% endfor %}{% endif %}"
    "{% else %}{{ m['role'].upper() + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] + ' ' }}"
    "{% else %}"
    "{% for it in m['content'] %}"
    "{% if it['type'] == 'image' or 'image' in it or 'image_url' in it %}@IMAGE@{% endif %}"
    "{% endfor %}"
    "{% for it in m['content'] if it['type'] == 'text' %}{{ it['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def chat_template(image_labels: bool = False) -> str:
    """The organism's LLaVA-style chat template (``Image k: <image>`` with ``image_labels``)."""
    return _TEMPLATE.replace("@IMAGE@", _LABELLED if image_labels else _IMAGE)


def pre_tokenizer(kind: str):
    """The ``tokenizers`` pre-tokenizer of ``kind`` (see the module docstring)."""
    from tokenizers import Regex, pre_tokenizers

    if kind == "v1":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "v2":
        pieces = Regex(r"\s|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+")
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(pieces, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise ValueError(f"pre-tokenizer must be one of {PRETOKENIZERS}, got {kind!r}")


def build_tokenizer(corpus: list[str], *, vocab_size: int, kind: str = "v2",
                    image_labels: bool = False):
    """Byte-level BPE learnt on ``corpus`` (``vocab_size`` target) with the organism's specials
    and chat template, as a ``PreTrainedTokenizerFast`` (adds BOS, pads left)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", add_bos_token=True, add_eos_token=False, padding_side="left",
        model_max_length=1024, chat_template=chat_template(image_labels),
        clean_up_tokenization_spaces=False, extra_special_tokens={"image_token": "<image>"},
    )
