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
from sizewise.compression import quant as Q
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
        elif isinstance(config, (Int8WeightOnlyConfig, Int8DynamicConfig, Int4WeightOnlyConfig)):
            lq = LayerQuantizer(model, config, rec)
            if config.needs_calibration:  # GPTQ, SmoothQuant: decoder layer by decoder layer
                G.run_sequential(model, calib_tokens, lq.is_target, lq.quantize_layer, progress, hessian=lq.hessian)
                rec.calibration = {**(rec.calibration or {}), **lq.facts()}
            lq.finish()  # RTN for every target not quantized above
            if getattr(config, "embed", "bf16") == "int8":
                from sizewise.compression.token_table import quantize_token_table
                for name, mod in quantize_token_table(model).items():
                    _record(rec, name, mod)
            if getattr(config, "stream", "bf16") == "fp32":
                from sizewise.compression.precision import apply_stream
                apply_stream(model, "fp32")  # kept tensors stored bf16, computed around the kernels in fp32
        elif isinstance(config, Int8StaticConfig):
            _int8_static(model, config, calib_tokens, rec)
        else:
            raise TypeError(f"unknown config {type(config).__name__}")
        if isinstance(config, (Int8DynamicConfig, Int8StaticConfig)):
            # W8A8 recipes run their float glue (embedding, norms, kept heads) in bf16: the model holds
            # and stores them so, whichever path saves it (CLI, API, study, streaming write the same file;
            # before this an fp32 parent kept an fp32 token table: 219.9 MB instead of 163.2 MB on the
            # bundled model)
            from sizewise.compression.precision import set_activation_dtype
            set_activation_dtype(model, torch.bfloat16)
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
                  rec: CompressionRecord, acc: G.HessianAccumulator | None) -> None:
    n, k = lin.weight.shape
    g, why = choose_group_size(k, n, config)
    if g is None:
        rec.kept[name] = why
        return
    if g != config.group_size:
        rec.fallbacks[name] = {"requested": config.group_size, "used": g,
                               "reason": f"input dim {k} is not a multiple of {config.group_size}"}
    grid = config.grid
    if grid == "act-mse" and acc is None:  # a target outside the decoder layers saw no calibration
        grid = "mse"
        rec.calibration = rec.calibration or {}
        rec.calibration.setdefault("grid_mse_without_statistics", []).append(name)
    if config.scale_bits == 6:
        new = _int4_s6(lin, g, config, grid, acc)
    else:
        if acc is not None and acc.H is not None:
            q, s, z = G.gptq_quantize_weight(lin.weight, acc.H, g, config.act_order, config.damp, config.block_size,
                                             zero=config.zero, grid=config.grid)
        else:
            q, s, z = Q.quantize_int4(lin.weight.detach(), g, config.zero, grid,
                                      None if acc is None else acc.importance)
        new = P.int4_linear(q, s, z, g, lin.bias)
    set_module(model, name, new)
    _record(rec, name, new)


def _int4_s6(lin: nn.Linear, g: int, config: Int4WeightOnlyConfig, grid: str,
             acc: G.HessianAccumulator | None) -> nn.Module:
    """int4 with 6-bit coded group scales (P.Int4SuperBlockLinear): the coded grid is fitted on the weights
    (weighted by mean x^2 for "act-mse", by diag(H) for GPTQ), then RTN or GPTQ rounds onto that fixed grid."""
    w = lin.weight.detach()
    importance = None
    if acc is not None and grid == "act-mse":
        importance = torch.diag(acc.H).float() if acc.H is not None else acc.importance
    q, cs, cz, sup = Q.fit_int4_sb(w, g, importance)
    if acc is not None and acc.H is not None:
        s, z = Q.sb_expand(cs, cz, sup)
        q, _, _ = G.gptq_quantize_weight(w, acc.H, g, config.act_order, config.damp, config.block_size,
                                         zero="float", fixed=(s, z))
    return P.Int4SuperBlockLinear(q, cs, cz, sup, g, lin.bias)


class LayerQuantizer:
    """Replaces the targeted Linears of int8-wo / int8-gptq / int8-dyn / int4 recipes. For the calibrated
    ones its `quantize_layer` is gptq.run_sequential's per-layer step (GPTQ rounding from the layer's
    Hessians; SmoothQuant folded into the layer before W8A8). The in-memory path and the streaming one
    both use it, so they write the same bytes."""

    def __init__(self, model: nn.Module, config: BaseConfig, rec: CompressionRecord) -> None:
        from sizewise.compression.smooth import SmoothRecord

        self.model, self.config, self.rec = model, config, rec
        self.targets = dict(target_linears(model, config))
        smooth = isinstance(config, Int8DynamicConfig) and config.smoothquant is not None
        self.sq = SmoothRecord(config.smoothquant) if smooth else None
        # GPTQ needs H; SmoothQuant only the input maxima, an activation-weighted grid only mean x^2
        self.hessian = getattr(config, "method", "") == "gptq"

    def is_target(self, name: str) -> bool:
        return name in self.targets

    def replace(self, name: str, acc: G.HessianAccumulator | None = None) -> None:
        """Swap one target for its packed module; acc (its calibration statistics) with a Hessian: GPTQ
        rounding, else round-to-nearest (on an activation-weighted grid when the recipe asks)."""
        lin, cfg = self.targets.pop(name), self.config
        if isinstance(cfg, Int4WeightOnlyConfig):
            _int4_replace(self.model, name, lin, cfg, self.rec, acc)
            return
        if isinstance(cfg, Int8DynamicConfig):
            new = P.Int8DynamicLinear.from_float(lin)
        elif acc is not None and acc.H is not None:
            q, s = G.gptq_quantize_int8(lin.weight, acc.H, damp=cfg.damp)
            new = P.Int8WeightOnlyLinear(q, s, lin.bias)
        else:
            new = P.Int8WeightOnlyLinear.from_float(lin)
        set_module(self.model, name, new)
        _record(self.rec, name, new)

    def quantize_layer(self, lname: str, layer: nn.Module, accs: dict[str, G.HessianAccumulator]) -> None:
        if self.sq is not None:
            from sizewise.compression.smooth import smooth_layer
            smooth_layer(layer, {k[len(lname) + 1:]: a.absmax for k, a in accs.items()}, self.sq.alpha, lname, self.sq)
        for name, acc in accs.items():
            self.replace(name, acc)

    def finish(self) -> None:
        """Round-to-nearest for the targets left (all of them without calibration; those outside the
        decoder layers with it)."""
        for name in list(self.targets):
            self.replace(name)

    def facts(self) -> dict:
        """What the manifest's calibration record adds for this recipe."""
        cfg = self.config
        if self.sq is not None:
            return smooth_summary(self.sq)
        if isinstance(cfg, Int4WeightOnlyConfig):
            grid = {"grid": cfg.grid, "zero": cfg.zero, **({"scale_bits": 6} if cfg.scale_bits == 6 else {})}
            if cfg.method == "rtn":
                return {"method": "rtn", **grid, "statistic": "mean x^2 per input channel"}
            return {"method": "gptq", "act_order": cfg.act_order, "damp": cfg.damp, **grid}
        return {"method": "gptq", "damp": cfg.damp}


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
