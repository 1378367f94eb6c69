"""export/common.py's comparison helpers, which the llama.cpp and vLLM checks report with."""
import torch

from serve import tiny  # tests/serve/tiny.py
from sizewise.export.common import greedy_reference, leading_agreement


def test_leading_agreement_counts_the_shared_prefix_only():
    assert leading_agreement([5, 6, 7, 8], [5, 6, 9, 8]) == 2
    assert leading_agreement([1, 2], [1, 2, 3]) == 2
    assert leading_agreement([3], [4]) == 0


def test_greedy_reference_is_generate_without_a_cache():
    m = tiny.tiny_llama(seed=0, dtype=torch.float32)
    p = tiny.prompts(1, lo=10, hi=11)[0]
    assert greedy_reference(m, p, 8) == tiny.hf_greedy(m, p, 8)


def test_divergence_reports_the_reference_margin_where_continuations_part():
    from sizewise.export.common import divergence
    m = tiny.tiny_llama(seed=0, dtype=torch.float32)
    p = tiny.prompts(1, lo=10, hi=11)[0]
    ref = greedy_reference(m, p, 6)
    assert divergence(m, p, ref, list(ref)) is None  # the same continuation: nothing to report
    with torch.inference_mode():
        lg = m(input_ids=torch.tensor([p + ref[:3]]), use_cache=False).logits[0, -1]
    runner_up = int(lg.topk(2).indices[1])
    other = ref[:3] + [runner_up] + ref[4:]
    d = divergence(m, p, ref, other)
    assert d["step"] == 3 and d["ref_token"] == ref[3] and d["other_token"] == runner_up
    assert d["margin"] == float(lg[ref[3]] - lg[runner_up]) >= 0 and d["other_rank"] == 1
