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


EDGE_MODEL = "tiny-edge"
EDGE_BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def edge_server():
    """A live server for the edge tests: the byte tokenizer (260 ids), context 512, a 64 KiB body limit.
    Yields (server, engine); at the end no block may be in use or leaked."""
    import torch

    from sizewise.serve.api import create_app
    from sizewise.serve.engine import Engine, EngineConfig
    from sizewise.serve.runner import kv_layout
    from sizewise.serve.server import BackgroundServer

    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=512)
    eng = Engine(model, tok, EngineConfig(kv_memory_bytes=4096 * kv_layout(model).bytes_per_token, block_size=8,
                                          latency_target_s=None))
    with BackgroundServer(create_app(eng, EDGE_MODEL, max_body_bytes=EDGE_BODY_LIMIT)) as srv:
        yield srv, eng
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0
