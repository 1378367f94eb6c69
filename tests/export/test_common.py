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
