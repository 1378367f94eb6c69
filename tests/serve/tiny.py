"""Tiny random models and a byte-level tokenizer built in the test process (fixed seeds, no files, no network)."""
from __future__ import annotations

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llama(seed: int = 0, dtype=torch.float64, vocab: int = 300, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    cfg.update(over)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(dtype).eval()
    return model


def tiny_deepseek_v3(seed: int = 0, dtype=torch.float64, vocab: int = 300, **over):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
               num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
               n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
               q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
               max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               rope_interleave=True, tie_word_embeddings=False, experts_implementation="eager")
    cfg.update(over)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**cfg)).to(dtype).eval()
    # HF leaves the router's correction bias at zero; give the router real weights so routing varies by token
    for layer in model.model.layers[1:]:
        torch.nn.init.normal_(layer.mlp.gate.weight, std=0.5)
    return model


def tiny_deepseek_v2(seed: int = 0, dtype=torch.float32, vocab: int = 300, **over):
    """DeepSeek-V2(-Lite)-style: MLA with complex rotary, MoE with a softmax group-limited router."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
               num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
               n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=None, kv_lora_rank=16,
               qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, experts_implementation="eager")
    cfg.update(over)
    return DeepseekV2ForCausalLM(DeepseekV2Config(**cfg)).to(dtype).eval()


def byte_tokenizer():
    """Byte-level BPE with no merges: 256 byte tokens + specials; round-trips any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                   chat_template=CHAT_TEMPLATE)


def prompts(n: int, seed: int = 1, vocab: int = 300, lo: int = 3, hi: int = 40) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        L = int(torch.randint(lo, hi, (1,), generator=g))
        out.append([1] + torch.randint(4, vocab, (L,), generator=g).tolist())
    return out


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(x),
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()
