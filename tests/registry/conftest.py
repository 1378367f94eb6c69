"""Registry fixtures: a fresh registry file per test, and a tiny HF model (char tokenizer) for real CLI runs."""
from __future__ import annotations


import pytest
from tiny_tokenizers import char_tokenizer as _char_tokenizer


@pytest.fixture
def reg_path(tmp_path, monkeypatch):
    """A registry file of this test's own; SIZEWISE_REGISTRY points at it so verbs record here."""
    p = tmp_path / "registry.sqlite"
    monkeypatch.setenv("SIZEWISE_REGISTRY", str(p))
    return p


@pytest.fixture
def fake_model(tmp_path):
    """A file with a tensor suffix: hashing never parses it, so a few bytes stand in for a checkpoint."""
    def make(name: str, data: bytes = b"weights") -> str:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p)
    return make




@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    """A 2-layer fp32 llama (hidden 64) as an HF directory with a character tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny") / "src"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(d)
    _char_tokenizer().save_pretrained(d)
    return d
