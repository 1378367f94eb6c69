"""Sampling rules and the stop-string hold-back used when streaming."""
import torch

from sizewise.serve.sampling import SamplingParams, find_stop, safe_emit_len, sample


def test_greedy_topk1_and_tiny_topp_pick_the_argmax():
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(50)
        best = int(logits.argmax())
        assert sample(logits, SamplingParams(temperature=0), None) == best
        p = SamplingParams(temperature=1.0, top_k=1, seed=1)
        assert sample(logits, p, p.generator()) == best
        p = SamplingParams(temperature=1.0, top_p=1e-6, seed=1)
        assert sample(logits, p, p.generator()) == best


def test_top_k_never_leaves_the_top_k():
    logits = torch.arange(10, dtype=torch.float32)
    p = SamplingParams(temperature=5.0, top_k=3, seed=0)
    g = p.generator()
    assert {sample(logits, p, g) for _ in range(200)} <= {7, 8, 9}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    p = SamplingParams(temperature=1.0, top_p=0.75, seed=0)
    g = p.generator()
    seen = {sample(probs.log(), p, g) for _ in range(300)}
    assert seen == {0, 1}


def test_seed_reproduces():
    logits = torch.randn(100)
    a = SamplingParams(temperature=1.0, seed=7)
    b = SamplingParams(temperature=1.0, seed=7)
    ga, gb = a.generator(), b.generator()
    assert [sample(logits, a, ga) for _ in range(20)] == [sample(logits, b, gb) for _ in range(20)]


def test_stop_detection_and_hold_back():
    assert find_stop("abc END def", ["END", "de"]) == 4
    assert find_stop("abc", ["x"]) == -1
    assert safe_emit_len("hello EN", ["END"]) == len("hello ")  # could become END: hold it
    assert safe_emit_len("hello EX", ["END"]) == len("hello EX")
    assert safe_emit_len("caf\ufffd", []) == 3  # incomplete UTF-8 char waits for its next byte


def test_penalties_and_logit_bias_change_greedy_choice():
    from sizewise.serve.sampling import SamplingParams, adjust, sample

    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(temperature=0), None) == 1
    assert sample(logits, SamplingParams(temperature=0, logit_bias={3: 10.0}), None) == 3
    assert sample(logits, SamplingParams(temperature=0, presence_penalty=0.5), None, output_ids=[1]) == 2
    assert sample(logits, SamplingParams(temperature=0, frequency_penalty=0.06), None, output_ids=[1, 1]) == 2
    assert sample(logits, SamplingParams(temperature=0, frequency_penalty=0.06), None, output_ids=[1]) == 1
    x = adjust(logits, SamplingParams(repetition_penalty=2.0), [1, 3], [])
    assert torch.equal(x, torch.tensor([0.0, 1.5, 2.9, -2.0]))  # seen ids 1 (positive: halved), 3 (negative: doubled)


def test_tiny_temperatures_are_greedy_not_nan():
    """Found by the fuzzer: temperature 2e-311 divided the logits to inf and multinomial raised on NaN."""
    from sizewise.serve.sampling import SamplingParams, sample

    logits = torch.tensor([0.5, 3.0, -2.0])
    for t in (2.225073858507e-311, 4.3e-201, 9e-6):
        p = SamplingParams(temperature=t, seed=1)
        assert p.greedy and sample(logits, p, p.generator()) == 1
    assert not SamplingParams(temperature=1e-5).greedy
