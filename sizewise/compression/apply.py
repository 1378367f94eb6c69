"""`compress(model, config)`: swap a model's Linear layers for packed modules, in place.

One handler per config kind. What happened is recorded on the model as `model.sizewise_compression`
(a CompressionRecord: per-module scheme and kernel, group-size fallbacks, layers kept in float and
why, calibration facts), which checkpoint.save_compressed writes into the manifest.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from sizewise.compression import gptq as G
from sizewise.compression import packed as P
from sizewise.compression.recipes import (BaseConfig, DtypeConfig, Int4WeightOnlyConfig, Int8DynamicConfig,
                                          Int8StaticConfig, Int8WeightOnlyConfig, TorchDynamicConfig, recipe_name)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CompressionRecord:
    recipe: dict
    recipe_name: str | None
    modules: dict[str, dict] = field(default_factory=dict)  # name -> {"scheme", "kernel"}
    fallbacks: dict[str, dict] = field(default_factory=dict)  # name -> {"requested", "used", "reason"}
    kept: dict[str, str] = field(default_factory=dict)  # targeted but left in float: name -> reason
    calibration: dict | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def target_linears(model: nn.Module, config: BaseConfig) -> list[tuple[str, nn.Linear]]:
    inc, exc = re.compile(config.include), re.compile(config.exclude)
    return [(n, m) for n, m in model.named_modules()
            if type(m) is nn.Linear and inc.search(n) and not exc.search(n)]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def choose_group_size(k: int, n: int, config: Int4WeightOnlyConfig) -> tuple[int | None, str]:
    """The requested group size if the kernel takes it, else the largest fallback that does."""
    for g in (config.group_size, *[g for g in config.fallback_group_sizes if g < config.group_size]):
        if P.int4_supported(n, k, g) is None:
            return g, ""
    return None, P.int4_supported(n, k, config.group_size) or "no group size fits"


def _record(rec: CompressionRecord, name: str, mod: nn.Module) -> None:
    rec.modules[name] = {"scheme": mod.scheme, "kernel": mod.kernel}


def compress(model: nn.Module, config: BaseConfig, calib_tokens: torch.Tensor | None = None,
             progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Quantize `model` in place according to `config`; returns it. `calib_tokens` [n, seq] for
    recipes that calibrate (int8-static, GPTQ)."""
    t0 = time.perf_counter()
    if config.needs_calibration and calib_tokens is None:
        raise ValueError(f"recipe {config.kind} needs calibration tokens (calib_tokens=[n, seq_len])")
    rec = CompressionRecord(recipe=config.to_dict(), recipe_name=recipe_name(config))
    if calib_tokens is not None and config.needs_calibration:
        rec.calibration = {"sequences": int(calib_tokens.shape[0]), "seq_len": int(calib_tokens.shape[1]),
                           "tokens": int(calib_tokens.numel())}
    model.eval()
    with torch.no_grad():
        if isinstance(config, DtypeConfig):
            cast_floats(model, DTYPES[config.dtype])
        elif isinstance(config, TorchDynamicConfig):
            _torch_dynamic(model, config, rec)
        elif isinstance(config, (Int8WeightOnlyConfig, Int8DynamicConfig)):
            cls = P.Int8DynamicLinear if isinstance(config, Int8DynamicConfig) else P.Int8WeightOnlyLinear
            if isinstance(config, Int8DynamicConfig) and config.smoothquant is not None:
                _int8_smoothquant(model, config, calib_tokens, rec, progress)
            elif isinstance(config, Int8WeightOnlyConfig) and config.method == "gptq":
                _int8_gptq(model, config, calib_tokens, rec, progress)
            for name, lin in target_linears(model, config):  # what is left (all of it without SmoothQuant)
                new = cls.from_float(lin)
                set_module(model, name, new)
                _record(rec, name, new)
        elif isinstance(config, Int8StaticConfig):
            _int8_static(model, config, calib_tokens, rec)
        elif isinstance(config, Int4WeightOnlyConfig):
            if config.method == "gptq":
                _int4_gptq(model, config, calib_tokens, rec, progress)
            else:
                for name, lin in target_linears(model, config):
                    _int4_replace(model, name, lin, config, rec, None)
        else:
            raise TypeError(f"unknown config {type(config).__name__}")
    rec.seconds = time.perf_counter() - t0
    model.sizewise_compression = rec
    return model


def smooth_summary(sq) -> dict:
    """What the manifest says about a SmoothQuant pass."""
    return {"method": "smoothquant", "alpha": sq.alpha, "smoothed_groups": len(sq.smoothed),
            "skipped": sq.skipped}


def cast_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast parameters and persistent buffers; non-persistent ones (rotary tables) stay fp32 as HF
    loading leaves them, so a reloaded checkpoint computes exactly what the in-memory model did."""
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in mod._buffers.items():
            if b is not None and b.is_floating_point() and name not in mod._non_persistent_buffers_set:
                mod._buffers[name] = b.to(dtype)
    if hasattr(model, "config"):
        model.config.dtype = dtype


def _int4_replace(model: nn.Module, name: str, lin: nn.Linear, config: Int4WeightOnlyConfig,
                  rec: CompressionRecord, H: torch.Tensor | None) -> None:
    n, k = lin.weight.shape
    g, why = choose_group_size(k, n, config)
    if g is None:
        rec.kept[name] = why
        return
    if g != config.group_size:
        rec.fallbacks[name] = {"requested": config.group_size, "used": g,
                               "reason": f"input dim {k} is not a multiple of {config.group_size}"}
    if H is None:
        new = P.Int4WeightOnlyLinear.from_float(lin, group_size=g)
    else:
        q, s, zp = G.gptq_quantize_weight(lin.weight, H, g, config.act_order, config.damp, config.block_size)
        new = P.Int4WeightOnlyLinear(q, s, zp, g, lin.bias)
    set_module(model, name, new)
    _record(rec, name, new)


def _int4_gptq(model, config: Int4WeightOnlyConfig, calib: torch.Tensor, rec: CompressionRecord, progress) -> None:
    targets = dict(target_linears(model, config))

    def quantize_layer(lname: str, layer: nn.Module, accs: dict[str, G.HessianAccumulator]) -> None:
        for name, acc in accs.items():
            _int4_replace(model, name, targets.pop(name), config, rec, acc.H)

    G.run_sequential(model, calib, lambda n: n in targets, quantize_layer, progress)
    for name, lin in targets.items():  # targeted Linears outside the decoder layers: plain RTN
        _int4_replace(model, name, lin, config, rec, None)
    if rec.calibration is not None:
        rec.calibration.update(method="gptq", act_order=config.act_order, damp=config.damp)


def _int8_smoothquant(model, config: Int8DynamicConfig, calib: torch.Tensor, rec: CompressionRecord,
                      progress) -> None:
    """SmoothQuant then W8A8, decoder layer by decoder layer: each layer is smoothed on its own inputs
    (the outputs of the already quantized layers before it), as the streaming path does."""
    from sizewise.compression.smooth import SmoothRecord, smooth_layer

    targets = dict(target_linears(model, config))
    sq = SmoothRecord(config.smoothquant)

    def quantize_layer(lname: str, layer: nn.Module, accs: dict[str, G.HessianAccumulator]) -> None:
        smooth_layer(layer, {k[len(lname) + 1:]: a.absmax for k, a in accs.items()}, sq.alpha, lname, sq)
        for name in accs:
            new = P.Int8DynamicLinear.from_float(targets.pop(name))
            set_module(model, name, new)
            _record(rec, name, new)

    G.run_sequential(model, calib, lambda n: n in targets, quantize_layer, progress, hessian=False)
    rec.calibration = {**(rec.calibration or {}), **smooth_summary(sq)}


def _int8_gptq(model, config: Int8WeightOnlyConfig, calib: torch.Tensor, rec: CompressionRecord, progress) -> None:
    targets = dict(target_linears(model, config))

    def quantize_layer(lname: str, layer: nn.Module, accs: dict[str, G.HessianAccumulator]) -> None:
        for name, acc in accs.items():
            lin = targets.pop(name)
            q, s = G.gptq_quantize_int8(lin.weight, acc.H, damp=config.damp)
            new = P.Int8WeightOnlyLinear(q, s, lin.bias)
            set_module(model, name, new)
            _record(rec, name, new)

    G.run_sequential(model, calib, lambda n: n in targets, quantize_layer, progress)
    if rec.calibration is not None:
        rec.calibration.update(method="gptq", damp=config.damp)


def _input_absmax(model, linears: dict[str, nn.Linear], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of each named Linear, one forward per calibration sequence."""
    accs = {n: G.HessianAccumulator(m.in_features, hessian=False) for n, m in linears.items()}
    hooks = [linears[n].register_forward_hook(a.hook) for n, a in accs.items()]
    try:
        for i in range(calib.shape[0]):
            model(input_ids=calib[i:i + 1], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {n: a.absmax for n, a in accs.items()}


def _smooth_float(model, config, calib: torch.Tensor, rec: CompressionRecord) -> None:
    """SmoothQuant on the float model from one calibration pass: smoothing preserves the float
    function, so every layer's input maxima can be taken before any layer is smoothed."""
    from sizewise.compression.smooth import SmoothRecord, smooth_layer

    prefix, layers = G.decoder_layers(model)
    amax = _input_absmax(model, {n: m for n, m in target_linears(model, config) if n.startswith(prefix + ".")}, calib)
    sq = SmoothRecord(config.smoothquant)
    for li, layer in enumerate(layers):
        p = f"{prefix}.{li}"
        smooth_layer(layer, {k[len(p) + 1:]: v for k, v in amax.items() if k.startswith(p + ".")}, sq.alpha, p, sq)
    rec.calibration = {**(rec.calibration or {}), **smooth_summary(sq)}


def _int8_static(model, config: Int8StaticConfig, calib: torch.Tensor, rec: CompressionRecord) -> None:
    if config.smoothquant is not None:
        _smooth_float(model, config, calib, rec)
    targets = target_linears(model, config)
    amax = _input_absmax(model, dict(targets), calib)  # on the smoothed model: the inputs it will see
    for name, lin in targets:
        a = amax[name] if config.strategy == "channel" else amax[name].amax().reshape(1)
        new = P.Int8StaticLinear.from_float(lin, input_absmax=a)
        set_module(model, name, new)
        _record(rec, name, new)
    if rec.calibration is not None:
        rec.calibration["strategy"] = config.strategy


def _torch_dynamic(model, config: TorchDynamicConfig, rec: CompressionRecord) -> None:
    """Baseline only: per-tensor dynamic activations; not saveable in the sizewise format."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    import warnings

    names = [n for n, _ in target_linears(model, config)]
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated; it is here as the baseline row
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)
    for n in names:
        rec.modules[n] = {"scheme": "torch-dynamic-qint8", "kernel": "quantized::linear_dynamic (fbgemm, per-tensor act)"}
