"""save_compressed / load_compressed: bit-identical reload, manifest, atomic refusals, damage."""
from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest
import torch

from comp_helpers import char_tokenizer, tiny_llama, tokens
from sizewise.compression import packed as P
from sizewise.compression.apply import compress
from sizewise.compression.checkpoint import load_compressed, save_compressed
from sizewise.compression.recipes import RECIPES, Int8StaticConfig
from sizewise.errors import SizewiseError


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=4, hidden=192, inter=512, tied=True)


@pytest.mark.parametrize("cfg", [RECIPES["int4-g128"], RECIPES["int4-ct-g64"], RECIPES["int4-imatrix-g64"],
                                 RECIPES["int8-wo"], RECIPES["int8-dyn"], Int8StaticConfig(strategy="channel"),
                                 RECIPES["bf16"]],
                         ids=["int4-g128", "int4-ct-g64", "int4-imatrix-g64", "int8-wo", "int8-dyn",
                              "int8-static-channel", "bf16"])
def test_reload_gives_bit_identical_logits(base, tmp_path, cfg):
    m = compress(copy.deepcopy(base), cfg, calib_tokens=tokens(2, 32, seed=9))
    ids = tokens(2, 40)
    with torch.no_grad():
        before = m(ids).logits
    man = save_compressed(m, char_tokenizer(), tmp_path / "out", None, None)
    m2, tok, man2 = load_compressed(tmp_path / "out")
    with torch.no_grad():
        after = m2(ids).logits
    assert torch.equal(before, after)
    assert tok is not None and tok("ab", add_special_tokens=False)["input_ids"] == char_tokenizer()("ab", add_special_tokens=False)["input_ids"]
    kinds = {n: type(mod) for n, mod in m2.named_modules() if isinstance(mod, P.PackedLinear)}
    assert kinds == {n: type(mod) for n, mod in m.named_modules() if isinstance(mod, P.PackedLinear)}
    assert man2["tensors"] == man["tensors"]
    assert m2.lm_head.weight is m2.model.embed_tokens.weight  # tied: stored once, re-tied


def test_manifest_and_config(base, tmp_path):
    src = tmp_path / "parent.bin"
    src.write_bytes(b"parent weights")
    m = compress(copy.deepcopy(base), RECIPES["int4-ct-g128"])  # compressed-tensors layout
    save_compressed(m, None, tmp_path / "out", None, src, metrics={"ppl": 1.5})
    man = json.loads((tmp_path / "out" / "sizewise.json").read_text())
    assert man["format"] == 1
    assert man["parent"]["sha256"] == hashlib.sha256(b"parent weights").hexdigest()
    assert set(man["versions"]) == {"sizewise", "torch", "transformers"}
    assert man["created"].endswith("+00:00") and man["metrics"] == {"ppl": 1.5}
    assert man["recipe"]["group_size"] == 128 and man["recipe_name"] == "int4-ct-g128"
    t = man["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert t == {"scheme": "int4-g128-asym", "shape": [192, 512]}
    assert man["tensors"]["model.layers.0.self_attn.q_proj.weight"]["scheme"] == "int4-g64-asym"
    assert "model.layers.0.self_attn.q_proj" in man["fallbacks"]
    assert man["tensors"]["model.embed_tokens.weight"]["scheme"] == "bf16"  # the fp32 stream stores kept tables in bf16
    assert man["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    groups = {g["weights"]["group_size"]: g for g in qc["config_groups"].values()}
    assert set(groups) == {64, 128} and "lm_head" in qc["ignore"]
    assert "model.layers.1.mlp.down_proj" in groups[128]["targets"]
    assert man["bytes_on_disk"] == (tmp_path / "out" / "model.safetensors").stat().st_size
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask  # not the temp dir's 0700
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_float_zero_checkpoint_is_listed_as_a_sizewise_scheme(base, tmp_path):
    """The default int4 layout (bf16 zero per group) has no compressed-tensors equivalent: it must not
    be announced as pack-quantized, or vLLM would read weight_zero as a 4-bit zero point."""
    from safetensors import safe_open

    m = compress(copy.deepcopy(base), RECIPES["int4-g128"])
    save_compressed(m, None, tmp_path / "out", None, None)
    man = json.loads((tmp_path / "out" / "sizewise.json").read_text())
    assert man["tensors"]["model.layers.0.mlp.down_proj.weight"]["scheme"] == "int4-g128-fz"
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["config_groups"] == {} and "model.layers.0.mlp.down_proj" in qc["sizewise_schemes"]["int4-g128-fz"]
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        z = f.get_tensor("model.layers.0.mlp.down_proj.weight_zero")
        assert z.dtype == torch.bfloat16 and tuple(z.shape) == (192, 512 // 128)
        assert "model.layers.0.mlp.down_proj.weight_zero_point" not in f.keys()


def test_existing_out_refused_unless_force(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    m = compress(copy.deepcopy(base), RECIPES["int8-wo"])
    with pytest.raises(SizewiseError, match="already exists"):
        save_compressed(m, None, out, None, None)
    assert (out / "keep.txt").read_text() == "mine"
    save_compressed(m, None, out, None, None, force=True)
    assert not (out / "keep.txt").exists() and (out / "sizewise.json").is_file()


@pytest.mark.parametrize("where", ["same", "ancestor"])
def test_out_equal_to_input_refused(base, tmp_path, where):
    src = tmp_path / "model"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"x")
    out = src if where == "same" else tmp_path
    with pytest.raises(SizewiseError, match="overwrite the input"):
        save_compressed(base, None, out, None, src, force=True)
    assert (src / "model.safetensors").read_bytes() == b"x"


def test_failure_midway_leaves_nothing(base, tmp_path):
    class Boom:
        def save_pretrained(self, d):
            raise RuntimeError("disk full")
    m = compress(copy.deepcopy(base), RECIPES["int8-wo"])
    with pytest.raises(RuntimeError):
        save_compressed(m, Boom(), tmp_path / "out", None, None)
    assert list(tmp_path.iterdir()) == []


def test_sharded_save_loads(base, tmp_path):
    m = compress(copy.deepcopy(base), RECIPES["int8-wo"])
    man = save_compressed(m, None, tmp_path / "out", None, None, shard_bytes=100_000)
    assert len(man["files"]) > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    m2, _, _ = load_compressed(tmp_path / "out")
    ids = tokens(1, 20)
    with torch.no_grad():
        assert torch.equal(m(ids).logits, m2(ids).logits)


def test_corrupt_or_truncated_checkpoint_is_a_user_error(base, tmp_path):
    m = compress(copy.deepcopy(base), RECIPES["int8-wo"])
    save_compressed(m, None, tmp_path / "out", None, None)
    f = tmp_path / "out" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SizewiseError, match="corrupt or truncated"):
        load_compressed(tmp_path / "out")
    with pytest.raises(SizewiseError, match="not a sizewise checkpoint"):
        load_compressed(tmp_path)


def test_torch_dynamic_cannot_be_saved(base, tmp_path):
    m = compress(copy.deepcopy(base), RECIPES["torch-dynamic"])
    with pytest.raises(SizewiseError, match="int8-dyn"):
        save_compressed(m, None, tmp_path / "out", None, None)
    assert not (tmp_path / "out").exists()
