"""The lean static-cache decode loop must be the same model as HF's forward, just faster."""
from __future__ import annotations

import pytest
import torch

from sizewise.evaluate.generate import HFDecoder, LeanDecoder, greedy, make_decoder


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        return Qwen2ForCausalLM(cfg).eval()
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lean_prefill_logits_match_hf(kind):
    m = _tiny(kind)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    dec = make_decoder(m, 2, 32)
    assert isinstance(dec, LeanDecoder)
    lean = dec.forward(ids, last_only=False)
    with torch.no_grad():
        ref = m(input_ids=ids).logits
    torch.testing.assert_close(lean, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lean_greedy_equals_hf_full_recompute(kind):
    m = _tiny(kind)
    prompt = torch.randint(0, 97, (3, 8), generator=torch.Generator().manual_seed(4))
    out = greedy(make_decoder(m, 3, 64), prompt, 10)
    seq = prompt
    with torch.no_grad():  # reference: no cache at all, full forward per token
        for _ in range(10):
            nxt = m(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq[:, 8:])


def test_hf_fallback_decoder_agrees_with_lean():
    m = _tiny("llama")
    prompt = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(5))
    a = greedy(make_decoder(m, 1, 40, lean=True), prompt, 8)
    b = greedy(HFDecoder(m, 1, 40), prompt, 8)
    assert torch.equal(a, b)


def test_cache_overflow_is_refused():
    m = _tiny("llama")
    dec = make_decoder(m, 1, 4)
    with pytest.raises(ValueError, match="cache holds 4"):
        dec.forward(torch.zeros(1, 5, dtype=torch.long))
