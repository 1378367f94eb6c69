"""Integration on the bundled SmolLM2-135M: 2:4 prune -> packed checkpoint -> identical logits, fewer bytes."""
from __future__ import annotations

import copy

import pytest
import torch


@pytest.mark.slow
def test_bundled_24_checkpoint_roundtrip(bundled_model, tmp_path):
    from sizewise.commands.prune import pack_pruned
    from sizewise.compression.checkpoint import load_compressed, save_compressed
    from sizewise.compression.prune import parse_pattern, prunable_linears, prune_model
    from sizewise.compression.sparse import SparseLinear, packed_nbytes

    model = copy.deepcopy(bundled_model.model)
    tok = bundled_model.tokenizer
    # the first 4 decoder layers keep the test short; shapes are the real ones (576 / 1536)
    targets = {n: m for n, m in prunable_linears(model).items() if int(n.split(".")[2]) < 4}
    pat = parse_pattern("2:4")
    masks = prune_model(model, "magnitude", pat, targets=targets)
    pack_pruned(model, masks, pat)
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert len(sparse) == 4 * 7
    packed = sum(packed_nbytes(m) for m in sparse.values())
    dense_fp16 = sum(2 * m.in_features * m.out_features for m in sparse.values())
    assert packed / dense_fp16 == pytest.approx(0.546875)  # fp16 values (1/2) + 3-bit pattern per 4 (3/64)
    ids = torch.tensor([tok("The quick brown fox jumps over", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ref = model(ids).logits
    man = save_compressed(model, None, tmp_path / "p24", {"prune": "test"}, None)
    params = {p.data_ptr(): p.numel() for p in model.parameters()}
    rest = sum(params.values()) * 4  # every other tensor stays fp32 here
    assert man["bytes_on_disk"] < rest + packed + 1_000_000
    loaded, _, _ = load_compressed(tmp_path / "p24")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
