"""Shared tiny models for the serving tests; generate() references are computed once per session."""
import pytest

from . import tiny

N_NEW = 8


@pytest.fixture(scope="session")
def llama_case():
    """(model, 20 mixed-length prompts, transformers greedy continuations of N_NEW tokens)."""
    model = tiny.tiny_llama(seed=0)
    prompts = tiny.prompts(20, seed=1)
    refs = [tiny.hf_greedy(model, p, N_NEW) for p in prompts]
    return model, prompts, refs


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and spinning threads on a shared box cost a lot."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
