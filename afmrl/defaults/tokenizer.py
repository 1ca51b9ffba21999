"""Offline tokenizers for small chat VLMs (the embedded default's extractor and the test models).

The Hub is out of reach, so the byte-level BPE is trained in code on whatever text the caller gives
(titles, attribute strings, the prompt). The result is a ``PreTrainedTokenizerFast`` with the
Qwen2-VL special tokens and a chat template that turns ``{"type": "image"}`` into
``<|vision_start|><|image_pad|><|vision_end|>``, so the same messages work for Qwen2-VL and for our
LLaVA-style extractor.
"""

from __future__ import annotations

from collections.abc import Iterable

CHAT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_chat_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    whole_word_tokens: Iterable[str] = (),
):
    """Train a byte-level BPE chat tokenizer offline.

    Args:
        texts: training corpus (any iterable of strings; iterated once).
        vocab_size: target vocabulary size including the 256 byte symbols and special tokens.
        whole_word_tokens: strings added as single (non-special) tokens, e.g. attribute values,
            so that a small decoder emits them in one step.

    Returns:
        ``transformers.PreTrainedTokenizerFast`` with pad = ``<|endoftext|>``, eos = ``<|im_end|>``,
        left padding (for batched generation) and :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[
            t for t in CHAT_SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")
        ],
        padding_side="left",
    )
    words = [w for w in dict.fromkeys(whole_word_tokens) if w]
    if words:
        fast.add_tokens(words)
    fast.chat_template = CHAT_TEMPLATE
    return fast
