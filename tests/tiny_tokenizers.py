"""Tokenizers the test folders share (importable from any test: tests/ is on sys.path via tests/conftest.py)."""
from __future__ import annotations

import string


def char_tokenizer():
    """A real PreTrainedTokenizerFast: one token per printable character (101 ids: <unk> + 100 chars)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
