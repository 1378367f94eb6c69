"""Shared fixtures. Tiny models are built in the test with fixed seeds; the bundled model is shared per session."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _registry_in_tmp(tmp_path_factory):
    """Verbs record into the model registry: never into the user's real data dir from a test."""
    old = os.environ.get("SIZEWISE_REGISTRY")
    os.environ["SIZEWISE_REGISTRY"] = str(tmp_path_factory.mktemp("registry") / "registry.sqlite")
    yield
    if old is None:
        os.environ.pop("SIZEWISE_REGISTRY", None)
    else:
        os.environ["SIZEWISE_REGISTRY"] = old


@pytest.fixture(scope="session")
def bundled_path():
    from sizewise.io.bundled import bundled_gguf_path
    return bundled_gguf_path()


# --- evaluation: the bundled model loaded once per session (fp32, dequantized GGUF; ~15 s) ---
@pytest.fixture(scope="session")
def bundled_model():
    """LoadedModel(model, tokenizer, source, kind) of the bundled GGUF. Do not modify the model in
    place: deepcopy it first (compressing mutates modules)."""
    from sizewise.io.model_load import load_model
    return load_model("bundled")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model):
    """A 2-layer random Llama (hidden 64, seed 0) saved as an HF directory with the bundled
    tokenizer, so the protocol's corpus tokenizes exactly as for the real model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bundled_model.tokenizer), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(d)
    bundled_model.tokenizer.save_pretrained(d)
    return d


# Tests compare tokens across runs and engines: one fixed intra-op thread count for the whole suite
# (the free-core governor, evaluate/threads.py, is tested on its own with this variable removed).
os.environ.setdefault("SIZEWISE_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))
