"""Integration on the bundled SmolLM2-135M (GGUF dequantized to fp32): paged greedy == generate()."""
import pytest
import torch

from sizewise.serve.engine import Engine, EngineConfig
from sizewise.serve.sampling import SamplingParams

from .test_runner import greedy

TEXTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village near the sea, there lived"]
N = 8


@pytest.mark.slow
def test_bundled_greedy_matches_generate(bundled_path):
    from sizewise.io.model_load import load_model

    lm = load_model(str(bundled_path))
    model, tok = lm.model, lm.tokenizer
    prompts = [tok.encode(t) for t in TEXTS]
    with torch.inference_mode():
        ref = []
        for p in prompts:
            x = torch.tensor([p])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
            ref.append(out[0, len(p):].tolist())
    assert greedy(model, prompts[:1], N, block_size=16) == ref[:1]  # alone
    eng = Engine(model, tok, EngineConfig(kv_memory_bytes=64 * 2**20, latency_target_s=None)).start()
    try:
        hs = [eng.submit(p, SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)) for p in prompts]
        got = [h.result(timeout=120).token_ids for h in hs]  # batched, different lengths
    finally:
        eng.shutdown(drain_s=1)
    assert got == ref
    assert eng.pool.used_blocks == 0 and eng.pool.leaked_blocks() == 0
