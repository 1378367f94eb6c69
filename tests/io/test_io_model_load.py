"""load_model: HF dirs in their stored dtype (low-memory path), sizewise dirs via load_compressed,
load time recorded, bad paths as one-line user errors."""
from __future__ import annotations

import copy

import pytest
import torch

from sizewise.errors import SizewiseError
from sizewise.io.model_load import load_model


def test_auto_dtype_keeps_a_bf16_checkpoint_in_bf16(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d)
    lm = load_model(str(d), "auto")
    assert lm.kind == "hf" and lm.load_s > 0
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}  # no fp32 copy was built
    assert {p.dtype for p in load_model(str(d)).model.parameters()} == {torch.float32}  # default: fp32


def test_sizewise_directory_loads_packed_and_matches_in_memory(tiny_model_dir, tmp_path):
    from sizewise.compression.apply import compress
    from sizewise.compression.checkpoint import save_compressed
    from sizewise.compression.recipes import RECIPES

    base = load_model(str(tiny_model_dir))
    m = compress(copy.deepcopy(base.model), RECIPES["int8-wo"])
    out = tmp_path / "int8"
    save_compressed(m, base.tokenizer, out, None, str(tiny_model_dir))
    lm = load_model(str(out))
    assert lm.kind == "sizewise" and lm.manifest is not None and lm.load_s > 0
    assert any(hasattr(x, "kernel") and "int8pack" in str(x.kernel) for x in lm.model.modules())
    ids = torch.tensor([lm.tokenizer("def f(x): return x", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, m(input_ids=ids).logits)


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(SizewiseError, match="not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SizewiseError, match="cannot load"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(SizewiseError, match="unknown dtype"):
        load_model(str(tmp_path / "empty"), "int3")
