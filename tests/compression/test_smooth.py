"""SmoothQuant: the float model is unchanged by smoothing, and W8A8 with it beats W8A8 without it
when activations have outlier channels (the case it exists for)."""
from __future__ import annotations

import copy

import pytest
import torch

from comp_helpers import tiny_llama, tokens
from sizewise.compression.apply import compress
from sizewise.compression.gptq import HessianAccumulator
from sizewise.compression.recipes import RECIPES, recipe_from_dict
from sizewise.compression.smooth import SmoothRecord, smooth_layer
from sizewise.errors import SizewiseError


def _with_outliers(seed: int = 0):
    """A tiny llama whose normed activations carry a few 40x channels, function kept by scaling the
    consuming weights' columns down (what trained LLMs look like to a quantizer)."""
    m = tiny_llama(seed=seed)
    with torch.no_grad():
        for layer in m.model.layers:
            for norm, lins in ((layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                               (layer.post_attention_layernorm, ("gate_proj", "up_proj"))):
                norm.weight[[3, 17, 101]] *= 40.0
                for n in lins:
                    lin = getattr(layer.self_attn if n[0] in "qkv" else layer.mlp, n)
                    lin.weight[:, [3, 17, 101]] /= 40.0
    return m


def _absmax(layer, ids_model, ids) -> dict[str, torch.Tensor]:
    accs = {n: HessianAccumulator(layer.get_submodule(n).in_features, hessian=False)
            for n in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj")}
    hooks = [layer.get_submodule(n).register_forward_hook(a.hook) for n, a in accs.items()]
    with torch.no_grad():
        ids_model(ids)
    for h in hooks:
        h.remove()
    return {n: a.absmax for n, a in accs.items()}


def test_smoothing_keeps_the_float_model_and_flattens_its_inputs():
    m = _with_outliers()
    ids = tokens(2, 48)
    with torch.no_grad():
        ref = m(ids).logits
    layer = m.model.layers[0]
    before = _absmax(layer, m, ids)
    rec = SmoothRecord(0.5)
    smooth_layer(layer, before, 0.5, "model.layers.0", rec)
    assert set(rec.smoothed) == {"model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
                                 "model.layers.0.mlp.up_proj"}
    with torch.no_grad():
        assert torch.allclose(m(ids).logits, ref, atol=1e-4, rtol=1e-4)
    after = _absmax(layer, m, ids)
    for n in before:  # outlier-to-median ratio of the inputs goes down, a lot where outliers were put
        r0 = float(before[n].max() / before[n].median())
        r1 = float(after[n].max() / after[n].median())
        assert r1 < (0.2 if n != "mlp.down_proj" else 1.0) * r0, (n, r0, r1)


def test_smoothquant_w8a8_beats_plain_w8a8_on_outlier_activations():
    base = _with_outliers(seed=1)
    ids, calib = tokens(2, 64, seed=5), tokens(4, 64, seed=6)
    with torch.no_grad():
        ref = torch.log_softmax(base(ids).logits, -1)

    def kld(cfg, calib_tokens=None) -> float:
        m = compress(copy.deepcopy(base), cfg, calib_tokens=calib_tokens)
        with torch.no_grad():
            out = torch.log_softmax(m(ids).logits, -1)
        return float((ref.exp() * (ref - out)).sum(-1).mean())

    plain = kld(RECIPES["int8-dyn-nosq"])
    smoothed = kld(RECIPES["int8-dyn"], calib)
    assert smoothed < 0.5 * plain, (smoothed, plain)
    static_plain = kld(recipe_from_dict({"base": "int8-static", "smoothquant": None}), calib)
    static_smoothed = kld(RECIPES["int8-static"], calib)
    assert static_smoothed < 0.5 * static_plain, (static_smoothed, static_plain)
    m = compress(copy.deepcopy(base), RECIPES["int8-dyn"], calib_tokens=calib)
    c = m.sizewise_compression.calibration
    assert c["method"] == "smoothquant" and c["alpha"] == 0.5 and c["smoothed_groups"] == 3 * 2 and c["skipped"] == []


def test_smoothquant_needs_calibration_and_a_sane_alpha():
    with pytest.raises(ValueError, match="calibration"):
        compress(tiny_llama(), RECIPES["int8-dyn"])
    assert not RECIPES["int8-dyn-nosq"].needs_calibration
    with pytest.raises(SizewiseError, match="smoothquant"):
        recipe_from_dict({"base": "int8-dyn", "smoothquant": 1.5})
    assert recipe_from_dict({"base": "int8-dyn", "smoothquant": None}) == RECIPES["int8-dyn-nosq"]


def test_int8_gptq_recipe_fields_are_validated():
    assert RECIPES["int8-gptq"].needs_calibration and not RECIPES["int8-wo"].needs_calibration
    with pytest.raises(SizewiseError, match="damp"):
        recipe_from_dict({"base": "int8-gptq", "damp": 2.0})
    with pytest.raises(SizewiseError, match="method"):
        recipe_from_dict({"base": "int8-wo", "method": "awq"})
