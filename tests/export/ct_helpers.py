"""Tiny models and checkpoints for the compressed-tensors export tests (built here, fixed seeds)."""
from __future__ import annotations


import torch
from tiny_tokenizers import char_tokenizer

VOCAB = 128
CALIB_TEXT = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(60))


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, tied: bool = True):
    """hidden 64 / intermediate 128: every Linear is a multiple of 32 in and out (vLLM's CPU int4 kernel)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).to(dtype).eval()




def calib(n: int = 2, seq: int = 128) -> torch.Tensor:
    ids = char_tokenizer()(CALIB_TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:n * seq], dtype=torch.long).view(n, seq)


def sizewise_checkpoint(out, recipe: str | dict, seed: int = 0):
    """A sizewise-compressed directory of a tiny fp32 llama (what `sizewise compress` writes); `recipe` a
    name or a recipe dict ({"base": ..., "act_order": true})."""
    from dataclasses import replace

    import sizewise
    from sizewise.compression.checkpoint import save_compressed
    from sizewise.compression.recipes import RECIPES, recipe_from_dict

    cfg = RECIPES[recipe] if isinstance(recipe, str) else recipe_from_dict(recipe)
    if cfg.needs_calibration:
        cfg = replace(cfg, calib_samples=2, calib_seq_len=128)
    m = tiny_llama(seed)
    sizewise.compress(m, cfg, calib_tokens=calib() if cfg.needs_calibration else None)
    save_compressed(m, char_tokenizer(), out, None, None)
    return out


def ids(n: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 90, (1, n), generator=g)
