"""Fixtures for the compression tests: tiny llama models (fixed seeds) and a tiny HF directory
with a character-level tokenizer, so the CLI's in-memory path runs without the bundled model."""
from __future__ import annotations


import pytest
import torch
from tiny_tokenizers import char_tokenizer

VOCAB = 128


def tiny_llama(seed: int = 0, hidden: int = 192, inter: int = 512, layers: int = 2, tied: bool = True,
               dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tokens(n: int, seq: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seq), generator=g)




@pytest.fixture
def tiny_hf_dir(tmp_path):
    """A sharded bf16 HF checkpoint of a tiny llama, with tokenizer."""
    d = tmp_path / "src"
    tiny_llama(seed=3, tied=False, dtype=torch.bfloat16).save_pretrained(d, max_shard_size="400KB")
    char_tokenizer().save_pretrained(d)
    return d
