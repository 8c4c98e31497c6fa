"""A tiny Llama-architecture model and tokenizer, built on the spot (no downloads).

The tokenizer is a word-level vocabulary over the text it is given plus byte-ish fallbacks, with a
Llama-3-style chat template that has *no* generation markers, so assistant-only loss has to be
computed without `{% generation %}` help — the hard case.
"""

from __future__ import annotations

import string
from pathlib import Path

LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]

BASE_TEXT = (
    "you are an ai character with the following persona character profile please stay in your and "
    "comply with while being helpful harmless name age gender race born place appearance general "
    "experience personality system user assistant hello hi what is who how why where when do does "
    "i am a the of to in it that for on my me this be have can will would tell about yourself "
    "question answer yes no good bad thank thanks story life work"
)


def build_tiny_tokenizer(extra_text: str = ""):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(f"{BASE_TEXT} {extra_text}".lower().split()))
    chars = [*string.ascii_lowercase, *string.digits, *string.punctuation, "\n", " "]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for item in chars + words:
        vocab.setdefault(item, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(
        pattern=Regex(r"\w+|[^\w\s]|\s"), behavior="isolated"
    )
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>"],
    )
    fast.chat_template = LLAMA3_STYLE_TEMPLATE
    return fast


def build_tiny_llama(path: str | Path, extra_text: str = "", seed: int = 0) -> Path:
    """Write a ~100k-parameter LlamaForCausalLM and its tokenizer to `path`; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer(extra_text)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
