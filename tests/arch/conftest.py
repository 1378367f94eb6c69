"""Meta-device ground truth: build the transformers model from a config without allocating weights.

`meta_counts(cfg)` returns what transformers itself would store: parameters (tied ones once) plus
persistent buffers, in total and per sizewise group (mapped from module names), and the shape of
every state-dict entry. This is the independent side the analytic inventory is checked against.
"""
from __future__ import annotations

import os
import re
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# transformers module name -> sizewise group. Order matters: first match wins.
GROUP_RULES = [
    (r"(^|\.)embed_tokens\.", "embedding"),
    (r"^lm_head\.", "lm_head"),
    (r"(norm|layernorm)\.weight$", "norms"),
    (r"\.self_attn\.", "attention"),
    (r"\.(mlp|block_sparse_moe)\.experts\.", "routed_experts"),
    (r"\.mlp\.shared_experts?\.", "shared_experts"),
    (r"\.(mlp|block_sparse_moe)\.gate\.", "router"),
    (r"\.mlp\.", "mlp"),
]


def group_of(name: str) -> str:
    for pat, g in GROUP_RULES:
        if re.search(pat, name):
            return g
    raise AssertionError(f"no group rule for {name}")


def _meta_counts(cfg: dict):
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    cfg = {k: v for k, v in cfg.items() if k not in ("auto_map", "quantization_config")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    seen: set[int] = set()
    groups: dict[str, int] = {}
    total = 0
    for name, p in model.named_parameters():  # deduplicates tied parameters
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        groups[group_of(name)] = groups.get(group_of(name), 0) + p.numel()
    param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    shapes = {}
    for name, t in model.state_dict().items():  # persistent buffers only
        shapes[name] = tuple(t.shape)
        if name not in param_names:
            total += t.numel()
            groups[group_of(name)] = groups.get(group_of(name), 0) + t.numel()
    return total, groups, shapes


@pytest.fixture(scope="session")
def meta_counts():
    return _meta_counts
