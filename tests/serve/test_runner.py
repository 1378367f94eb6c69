"""The paged runner's greedy tokens equal transformers generate(), alone and batched, GQA and MLA."""
import torch
from torch import nn

from sizewise.serve.kv_pool import KVPool
from sizewise.serve.runner import ModelRunner, StepInput, kv_layout

from . import tiny


def greedy(model, prompts, n, block_size=4, num_blocks=400):
    """Prefill all prompts in one padded batch, then decode them together, argmax each step."""
    pool = KVPool(kv_layout(model), num_blocks, block_size)
    runner = ModelRunner(model, pool)
    toks = [list(p) for p in prompts]
    logits = runner.forward([StepInput(i, t, 0) for i, t in enumerate(toks)])
    outs = [[] for _ in prompts]
    for step in range(n):
        for i, t in enumerate(logits.argmax(-1).tolist()):
            outs[i].append(t)
            toks[i].append(t)
        if step < n - 1:
            logits = runner.forward([StepInput(i, [t[-1]], len(t) - 1) for i, t in enumerate(toks)])
    for i in range(len(prompts)):
        pool.free(i)
    assert pool.free_blocks == num_blocks and pool.leaked_blocks() == 0
    return outs


def test_llama_greedy_matches_generate_alone_and_batched(llama_case):
    model, prompts, ref = llama_case
    n = len(ref[0])
    assert len(prompts) >= 20 and len({len(p) for p in prompts}) > 5  # mixed lengths: padding and masks matter
    assert len({tuple(r) for r in ref}) > 1
    alone = [greedy(model, [p], n)[0] for p in prompts]
    assert alone == ref
    assert greedy(model, prompts, n) == ref


def test_mla_latent_cache_matches_deepseek_v3_generate():
    model = tiny.tiny_deepseek_v3(seed=0)
    lay = kv_layout(model)
    cfg = model.config
    assert lay.kind == "mla" and lay.latent_dim == cfg.kv_lora_rank + cfg.qk_rope_head_dim
    prompts = tiny.prompts(4, seed=2, hi=20)
    ref = [tiny.hf_greedy(model, p, 5) for p in prompts]
    assert [greedy(model, [p], 5)[0] for p in prompts] == ref
    assert greedy(model, prompts, 5) == ref


def test_mla_without_q_lora_or_interleave():
    model = tiny.tiny_deepseek_v3(seed=3, q_lora_rank=None, rope_interleave=False)
    prompts = tiny.prompts(3, seed=4, hi=12)
    ref = [tiny.hf_greedy(model, p, 5) for p in prompts]
    assert greedy(model, prompts, 5) == ref


def test_mla_deepseek_v2_complex_rotary():
    model = tiny.tiny_deepseek_v2(seed=0)
    assert kv_layout(model).kind == "mla"
    prompts = tiny.prompts(4, seed=5, hi=16)
    ref = [tiny.hf_greedy(model, p, 5) for p in prompts]
    assert greedy(model, prompts, 5) == ref


class TransposedLinear(nn.Module):
    """Stands in for a packed Linear: different storage, same forward as nn.Linear."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.wt = nn.Parameter(lin.weight.detach().t().contiguous())
        self.bias = lin.bias

    def forward(self, x):
        y = x @ self.wt
        return y + self.bias if self.bias is not None else y


def test_swapped_linears_are_used():
    model = tiny.tiny_llama(seed=5, attention_bias=True)  # qwen2-like biases too
    prompts = tiny.prompts(4, seed=6)
    before = greedy(model, prompts, 6)
    for layer in model.model.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer.self_attn, name, TransposedLinear(getattr(layer.self_attn, name)))
        with torch.no_grad():
            layer.self_attn.o_proj.wt.mul_(-1.0)  # change the function: outputs must follow the swapped module
    ref = [tiny.hf_greedy(model, p, 6) for p in prompts]
    assert greedy(model, prompts, 6) == ref
    assert ref != before


def test_int8_packed_linears_from_compression():
    """The real packed int8 weight-only modules (sizewise.compression) run inside the paged runner.
    Their kernel computes in bf16, so compare logits with a bf16-sized tolerance rather than argmax ties."""
    from sizewise.compression.apply import compress
    from sizewise.compression.recipes import get_recipe

    model = tiny.tiny_llama(seed=0, dtype=torch.float32, hidden_size=128, intermediate_size=256)
    compress(model, get_recipe("int8-wo"))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ != "Linear"
    assert kv_layout(model).dtype == torch.float32  # int8's fp32 stream: K/V cached in fp32, not the bf16 table's dtype
    prompts = tiny.prompts(4, seed=3)
    pool = KVPool(kv_layout(model), 100, 8)
    got = ModelRunner(model, pool).forward([StepInput(i, p, 0) for i, p in enumerate(prompts)])
    with torch.inference_mode():
        want = torch.stack([model(torch.tensor([p])).logits[0, -1] for p in prompts]).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75


def test_prefill_and_decode_share_one_forward(llama_case):
    """Sequences join mid-flight: each forward mixes new prompts (long queries) with decoding ones (one query)."""
    model, prompts, ref = llama_case
    n = len(ref[0])
    pool = KVPool(kv_layout(model), 600, 4)
    runner = ModelRunner(model, pool)
    toks, outs, started = {}, {}, []
    for step in range(len(prompts) + n):
        batch = [StepInput(i, [toks[i][-1]], len(toks[i]) - 1) for i in started if len(outs[i]) < n]
        if step < len(prompts):  # one new prompt joins every step
            toks[step], outs[step] = list(prompts[step]), []
            batch.insert(step % 2 * len(batch), StepInput(step, list(prompts[step]), 0))  # first or last in the batch
            started.append(step)
        if not batch:
            break
        for s, t in zip(batch, runner.forward(batch).argmax(-1).tolist()):
            outs[s.seq_id].append(t)
            toks[s.seq_id].append(t)
    assert [outs[i] for i in range(len(prompts))] == ref


def test_prompt_fed_in_chunks_matches_generate(llama_case):
    """Multi-token inputs on top of cached tokens (not fresh prompts) take the gathered, masked path."""
    model, prompts, ref = llama_case
    n = len(ref[0])
    pool = KVPool(kv_layout(model), 600, 4)
    runner = ModelRunner(model, pool)
    long = [i for i, p in enumerate(prompts) if len(p) >= 6][:6]
    assert len(long) >= 3
    first = runner.forward([StepInput(i, prompts[i][:3], 0) for i in long])  # part of each prompt
    assert first.shape[0] == len(long)
    logits = runner.forward([StepInput(i, prompts[i][3:], 3) for i in long])  # the rest, 3 tokens cached
    toks = {i: list(prompts[i]) for i in long}
    outs = {i: [] for i in long}
    for step in range(n):
        for i, t in zip(long, logits.argmax(-1).tolist()):
            outs[i].append(t)
            toks[i].append(t)
        if step < n - 1:
            logits = runner.forward([StepInput(i, [toks[i][-1]], len(toks[i]) - 1) for i in long])
    assert [outs[i] for i in long] == [ref[i] for i in long]


def test_split_by_context_is_optimal_and_complete():
    import itertools
    import random

    from sizewise.serve.runner import split_by_context

    def cost(parts, nb, g):
        return sum(len(p) * max(nb[r] for r in p) + g for p in parts)

    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(1, 7)
        rows = list(range(n))
        nb = [rng.choice([1, 2, 3, 20, 25, 40]) for _ in rows]
        g = rng.choice([0, 5, 48])
        parts = split_by_context(rows, nb, g)
        assert sorted(r for p in parts for r in p) == rows  # every row exactly once
        # brute force over contiguous cuts of the context-sorted order (optimal partitions are contiguous there)
        order = sorted(rows, key=lambda r: nb[r])
        best = min(cost([order[a:b] for a, b in zip((0,) + c, c + (n,))], nb, g)
                   for k in range(n) for c in itertools.combinations(range(1, n), k))
        assert cost(parts, nb, g) == best
    assert len(split_by_context([0, 1, 2, 3], [1, 1, 40, 40], 0)) == 2  # short and long contexts apart
    assert split_by_context([0, 1, 2], [1, 2, 40], 10**6) == [[0, 1, 2]]  # overhead dominates: one group


def _fused_or_skip(model, pool):
    import pytest

    runner = ModelRunner(model, pool)
    if not runner.fused_decode:
        pytest.skip(f"fused decode path unavailable: {runner.fused_why}")
    return runner


def test_fused_decode_matches_generate_and_the_general_path():
    """fp32 pool + sizewise's kernels: decode-only steps take _decode_fused (paged-attention kernel)."""
    model = tiny.tiny_llama(seed=5, dtype=torch.float32)
    prompts = tiny.prompts(8, seed=6)
    ref = [tiny.hf_greedy(model, p, 8) for p in prompts]
    _fused_or_skip(model, KVPool(kv_layout(model), 400, 4))
    assert [greedy(model, [p], 8)[0] for p in prompts] == ref
    assert greedy(model, prompts, 8) == ref
    # one decode step, fused against the general path, from identical pools
    runs = []
    for fused in (True, False):
        pool = KVPool(kv_layout(model), 400, 4)
        r = ModelRunner(model, pool)
        r.fused_decode = fused
        first = r.forward([StepInput(i, list(p), 0) for i, p in enumerate(prompts)]).argmax(-1).tolist()
        logits = r.forward([StepInput(i, [t], len(p)) for i, (p, t) in enumerate(zip(prompts, first))])
        runs.append((logits, pool))
    (a, pa), (b, pb) = runs
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(pa.k + pa.v, pb.k + pb.v))


def test_int4_model_serves_the_same_tokens_alone_and_batched():
    """int4 weights on sizewise's kernel (q/k/v and gate/up in one call each): a sequence's tokens do not
    depend on which others share its batch, and match generate() on the same compressed model."""
    import copy

    from sizewise.compression.apply import compress
    from sizewise.compression.recipes import get_recipe

    model = compress(copy.deepcopy(tiny.tiny_llama(seed=7, dtype=torch.float32)), get_recipe("int4-g32"))
    _fused_or_skip(model, KVPool(kv_layout(model), 400, 4))
    prompts = tiny.prompts(6, seed=8)
    alone = [greedy(model, [p], 8)[0] for p in prompts]
    assert greedy(model, prompts, 8) == alone
    assert alone == [tiny.hf_greedy(model, p, 8) for p in prompts]
