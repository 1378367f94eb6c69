"""Evaluation and calibration text, tokenized the way the measurement protocol says.

Protocol (DESIGN.md): the default corpus is `pydoc_data.topics.topics` (values in sorted key
order, joined by blank lines), so every Python install has the same text. Tokens are produced
without special tokens (no BOS). Evaluation uses the first N tokens; calibration data is taken
from tokens after the first `EVAL_RESERVED` so it never overlaps what we score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sizewise.errors import SizewiseError

EVAL_RESERVED = 16384  # calibration starts after this many corpus tokens: disjoint from eval
DEFAULT_EVAL_TOKENS = 8192
DEFAULT_WINDOW = 512


def corpus_text(files: Sequence[str | Path] | None = None) -> str:
    """The default corpus, or the given text files joined by blank lines."""
    if files:
        parts = []
        for f in files:
            p = Path(f)
            if not p.is_file():
                raise SizewiseError(f"text file not found: {p} (pass an existing UTF-8 text file to --text)")
            try:
                parts.append(p.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise SizewiseError(f"{p} is not UTF-8 text: pass a plain text file to --text") from None
        return "\n\n".join(parts)
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


_TOKEN_CACHE: dict[tuple[int, int], list[int]] = {}


def corpus_tokens(tokenizer, text: str | None = None) -> list[int]:
    """All tokens of the corpus, no special tokens (no BOS). Cached per tokenizer and text."""
    text = corpus_text() if text is None else text
    key = (id(tokenizer), hash(text))
    if key not in _TOKEN_CACHE:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        _TOKEN_CACHE[key] = list(ids)
    return _TOKEN_CACHE[key]


def eval_tokens(tokenizer, n: int = DEFAULT_EVAL_TOKENS, text: str | None = None) -> list[int]:
    """The first `n` corpus tokens: the tokens perplexity / KLD / top-1 are measured on."""
    if n < 2:
        raise SizewiseError(f"need at least 2 evaluation tokens, got {n}")
    toks = corpus_tokens(tokenizer, text)
    if len(toks) < n:
        raise SizewiseError(f"the evaluation text has only {len(toks)} tokens, fewer than the {n} asked for: "
                            "pass a longer --text or lower --tokens")
    return toks[:n]


def calib_tokens(tokenizer, n: int, seq_len: int, text: str | None = None):
    """`n` calibration sequences of `seq_len` tokens, from after the first EVAL_RESERVED tokens.

    Returns a LongTensor [n, seq_len]. Disjoint from `eval_tokens` (for n_eval <= EVAL_RESERVED),
    so calibrating a quantizer never sees the text it is scored on.
    """
    import torch

    if n < 1 or seq_len < 1:
        raise SizewiseError(f"calibration needs n >= 1 and seq_len >= 1, got n={n}, seq_len={seq_len}")
    toks = corpus_tokens(tokenizer, text)
    avail = len(toks) - EVAL_RESERVED
    need = n * seq_len
    if avail < need:
        raise SizewiseError(f"calibration needs {need} tokens after the first {EVAL_RESERVED}, the text has "
                            f"{max(avail, 0)}: use fewer/shorter calibration sequences or a longer text")
    block = toks[EVAL_RESERVED:EVAL_RESERVED + need]
    return torch.tensor(block, dtype=torch.long).view(n, seq_len)


def windows(tokens: Sequence[int], window: int = DEFAULT_WINDOW) -> list[list[int]]:
    """Non-overlapping windows; a trailing piece shorter than 2 tokens predicts nothing and is dropped."""
    if window < 2:
        raise SizewiseError(f"window must be at least 2 tokens, got {window}")
    out = [list(tokens[i:i + window]) for i in range(0, len(tokens), window)]
    return [w for w in out if len(w) >= 2]
