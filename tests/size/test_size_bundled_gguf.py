"""The GGUF policy against a real llama.cpp file: the bundled SmolLM2-135M-Instruct Q4_1 GGUF.

Only the header is read (no weights); the file's own tensor types and data-region length are the
reference."""
from __future__ import annotations

import collections

import gguf

from sizewise.arch.resolve import inventory_for
from sizewise.io.gguf_meta import read_gguf_header
from sizewise.size.formats import size_in_format


def test_q4_1_policy_matches_bundled_file(bundled_path):
    h = read_gguf_header(bundled_path)
    by_type: dict[str, int] = collections.Counter()
    for t in h.tensors:
        blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.ggml_type]]
        by_type[t.ggml_type] += t.numel // blk * size
    data_region = h.file_bytes - h.data_start
    # tensors are 32-byte aligned: the data region is the tensor bytes plus < 32 B of padding each
    assert 0 <= data_region - sum(by_type.values()) < 32 * len(h.tensors)
    for model in ("bundled", "smollm2-135m"):
        s = size_in_format(inventory_for(model), "q4_1")
        # llama.cpp put the tied token_embd at Q8_0 (Q6_K wanted, 576 not a multiple of 256),
        # norms at F32, every other matrix at Q4_1: the estimator must agree byte for byte
        assert s.bytes_by_type == dict(by_type), model
        assert s.bytes == sum(by_type.values()), model
