"""Recipes: compression configs as dataclasses (torchao's `quantize_(model, Config)` shape) and their names.

Which tensors a recipe touches is part of it: `include`/`exclude` are regular expressions searched
in each nn.Linear's qualified name. Default: Linear layers inside decoder layers; embeddings, norms,
router gates and lm_head stay as they are.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sizewise.errors import SizewiseError

DEFAULT_INCLUDE = r"\.layers\.\d+\."
DEFAULT_EXCLUDE = r"(lm_head|embed|norm|\.gate$)"


@dataclass(frozen=True)
class BaseConfig:
    include: str = DEFAULT_INCLUDE
    exclude: str = DEFAULT_EXCLUDE
    kind: str = field(default="", init=False)  # set by subclasses; names the config type in JSON

    @property
    def needs_calibration(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DtypeConfig(BaseConfig):
    """Cast every floating tensor (not only Linear weights): fp32 is the identity."""
    dtype: str = "bf16"  # fp32 | fp16 | bf16
    kind: str = field(default="dtype", init=False)


@dataclass(frozen=True)
class TorchDynamicConfig(BaseConfig):
    """Baseline row: torch.ao.quantization.quantize_dynamic (per-tensor dynamic activations)."""
    kind: str = field(default="torch-dynamic", init=False)


@dataclass(frozen=True)
class Int8WeightOnlyConfig(BaseConfig):
    """int8 per-output-channel symmetric weights; method 'gptq' rounds them with GPTQ (calibrated),
    same storage and kernel."""
    method: str = "rtn"  # rtn | gptq
    damp: float = 0.01
    calib_samples: int = 16
    calib_seq_len: int = 256
    stream: str = "fp32"  # precision around the kernels (compression/precision.py): fp32 | bf16
    kind: str = field(default="int8-wo", init=False)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"


@dataclass(frozen=True)
class Int8DynamicConfig(BaseConfig):
    """W8A8, activations quantized per token at run time. `smoothquant` = alpha: migrate activation
    outliers into the weights first (SmoothQuant, calibrated); None = plain per-token W8A8."""
    smoothquant: float | None = 0.5
    calib_samples: int = 16
    calib_seq_len: int = 256
    kind: str = field(default="int8-dyn", init=False)

    @property
    def needs_calibration(self) -> bool:
        return self.smoothquant is not None


@dataclass(frozen=True)
class Int8StaticConfig(BaseConfig):
    strategy: str = "tensor"  # tensor | channel: granularity of the calibrated activation scale
    smoothquant: float | None = 0.5  # SmoothQuant alpha applied before calibrating scales; None = off
    calib_samples: int = 8  # calibration sequences
    calib_seq_len: int = 256
    kind: str = field(default="int8-static", init=False)

    @property
    def needs_calibration(self) -> bool:
        return True


@dataclass(frozen=True)
class Int4WeightOnlyConfig(BaseConfig):
    """int4 group-wise weights. `zero`: "float" (bf16 zero per group, the kernel's own convention) or
    "int" (4-bit zero point, compressed-tensors' pack-quantized layout that vLLM loads; min/max grid
    only). `grid`: how each group's (scale, zero) is chosen: "minmax", "mse" (least squares on the
    weights, data-free) or "act-mse" (least squares weighted by the mean x^2 of each input channel on
    calibration text; calibrated). Rounding is to nearest either way; method "gptq" adds GPTQ's
    error feedback."""
    group_size: int = 128
    method: str = "rtn"  # rtn | gptq
    zero: str = "float"  # float | int
    grid: str = "mse"  # minmax | mse | act-mse
    # When group_size does not divide a layer's input dim: fall back to the largest of these that does.
    fallback_group_sizes: tuple[int, ...] = (64, 32)
    # GPTQ
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128
    calib_samples: int = 16
    calib_seq_len: int = 256
    stream: str = "fp32"  # precision around the kernels (compression/precision.py): fp32 | bf16
    # the token table (input embedding + tied lm_head): "bf16" as the policy says, or "int8" rows with a
    # bf16 scale per row (compression/token_table.py)
    embed: str = "bf16"
    # bits of each group's stored scale and zero: 16 (bf16 each) or 6 (6-bit codes against three fp16
    # numbers per row super-block, quant.fit_int4_sb: a g32 grid at 4.46 bits per weight instead of 5)
    scale_bits: int = 16
    kind: str = field(default="int4", init=False)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq" or self.grid == "act-mse"


CONFIG_TYPES: dict[str, type[BaseConfig]] = {
    "dtype": DtypeConfig, "torch-dynamic": TorchDynamicConfig, "int8-wo": Int8WeightOnlyConfig,
    "int8-dyn": Int8DynamicConfig, "int8-static": Int8StaticConfig, "int4": Int4WeightOnlyConfig,
}

RECIPES: dict[str, BaseConfig] = {
    "fp32": DtypeConfig(dtype="fp32"),
    "fp16": DtypeConfig(dtype="fp16"),
    "bf16": DtypeConfig(dtype="bf16"),
    "torch-dynamic": TorchDynamicConfig(),
    "int8-wo": Int8WeightOnlyConfig(),
    "int8-gptq": Int8WeightOnlyConfig(method="gptq"),
    "int8-dyn": Int8DynamicConfig(),
    "int8-dyn-nosq": Int8DynamicConfig(smoothquant=None),
    "int8-static": Int8StaticConfig(),
    "int4-g32": Int4WeightOnlyConfig(group_size=32),
    "int4-g64": Int4WeightOnlyConfig(group_size=64),
    "int4-g128": Int4WeightOnlyConfig(group_size=128),
    "int4-gptq-g64": Int4WeightOnlyConfig(group_size=64, method="gptq", grid="act-mse"),
    "int4-gptq-g128": Int4WeightOnlyConfig(group_size=128, method="gptq", grid="act-mse"),
    "int4-imatrix-g64": Int4WeightOnlyConfig(group_size=64, grid="act-mse"),
    "int4-imatrix-g128": Int4WeightOnlyConfig(group_size=128, grid="act-mse"),
    "int4-g64-emb8": Int4WeightOnlyConfig(group_size=64, embed="int8"),
    "int4-g32-s6": Int4WeightOnlyConfig(group_size=32, scale_bits=6, fallback_group_sizes=()),
    "int4-imatrix-g32-s6": Int4WeightOnlyConfig(group_size=32, scale_bits=6, grid="act-mse", fallback_group_sizes=()),
    "int4-gptq-g32-s6": Int4WeightOnlyConfig(group_size=32, scale_bits=6, method="gptq", grid="act-mse",
                                             fallback_group_sizes=()),
    "int4-g32-s6-emb8": Int4WeightOnlyConfig(group_size=32, scale_bits=6, fallback_group_sizes=(), embed="int8"),
    "int4-gptq-g32-s6-emb8": Int4WeightOnlyConfig(group_size=32, scale_bits=6, method="gptq", grid="act-mse",
                                                  fallback_group_sizes=(), embed="int8"),
    "int4-gptq-g64-emb8": Int4WeightOnlyConfig(group_size=64, method="gptq", grid="act-mse", embed="int8"),
    "int4-ct-g32": Int4WeightOnlyConfig(group_size=32, zero="int", grid="minmax"),
    "int4-ct-g64": Int4WeightOnlyConfig(group_size=64, zero="int", grid="minmax"),
    "int4-ct-g128": Int4WeightOnlyConfig(group_size=128, zero="int", grid="minmax"),
}


def recipe_name(config: BaseConfig) -> str | None:
    for name, c in RECIPES.items():
        if c == config:
            return name
    return None


def get_recipe(spec: str) -> BaseConfig:
    """A recipe name, or a path to a .json/.yaml/.yml recipe file."""
    if spec in RECIPES:
        return RECIPES[spec]
    if spec.endswith((".json", ".yaml", ".yml")) or Path(spec).is_file():
        return recipe_from_file(spec)
    raise SizewiseError(f"unknown recipe {spec!r}: choose one of {', '.join(RECIPES)} or give a .json/.yaml recipe file")


def recipe_from_dict(d: dict[str, Any], where: str = "recipe") -> BaseConfig:
    """{"base": "int4-g128", "act_order": true} or {"kind": "int4", "group_size": 64, ...}."""
    d = dict(d)
    if "base" in d:
        base_name = d.pop("base")
        if base_name not in RECIPES:
            raise SizewiseError(f"{where}: unknown base recipe {base_name!r}: choose one of {', '.join(RECIPES)}")
        base = RECIPES[base_name]
    elif "kind" in d:
        kind = d.pop("kind")
        if kind not in CONFIG_TYPES:
            raise SizewiseError(f"{where}: unknown kind {kind!r}: choose one of {', '.join(CONFIG_TYPES)}")
        base = CONFIG_TYPES[kind]()
    else:
        raise SizewiseError(f"{where}: say which recipe with \"base\": NAME (one of {', '.join(RECIPES)}) or \"kind\"")
    d.pop("kind", None)
    allowed = {f.name for f in fields(base) if f.init}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SizewiseError(f"{where}: unknown field(s) {', '.join(unknown)} for {base.kind}: allowed {', '.join(sorted(allowed))}")
    if "fallback_group_sizes" in d:
        d["fallback_group_sizes"] = tuple(d["fallback_group_sizes"])
    cfg = replace(base, **d)
    validate(cfg, where)
    return cfg


def recipe_from_file(path: str | Path) -> BaseConfig:
    p = Path(path)
    if not p.is_file():
        raise SizewiseError(f"recipe file not found: {p} (give a recipe name: {', '.join(RECIPES)})")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml
            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
    except Exception as e:  # noqa: BLE001 - json and yaml raise different types
        raise SizewiseError(f"cannot parse recipe file {p}: {str(e).splitlines()[0]}")
    if not isinstance(d, dict):
        raise SizewiseError(f"recipe file {p} must hold a mapping, e.g. {{\"base\": \"int4-g128\"}}")
    return recipe_from_dict(d, where=str(p))


def validate(cfg: BaseConfig, where: str = "recipe") -> None:
    import re
    for pat in (cfg.include, cfg.exclude):
        try:
            re.compile(pat)
        except re.error as e:
            raise SizewiseError(f"{where}: bad pattern {pat!r}: {e}")
    if isinstance(cfg, DtypeConfig) and cfg.dtype not in ("fp32", "fp16", "bf16"):
        raise SizewiseError(f"{where}: dtype must be fp32, fp16 or bf16, got {cfg.dtype!r}")
    if isinstance(cfg, (Int8DynamicConfig, Int8StaticConfig)) and cfg.smoothquant is not None \
            and not 0.0 <= cfg.smoothquant <= 1.0:
        raise SizewiseError(f"{where}: smoothquant (alpha) must be in [0, 1] or null, got {cfg.smoothquant}")
    if isinstance(cfg, Int8StaticConfig) and cfg.strategy not in ("tensor", "channel"):
        raise SizewiseError(f"{where}: strategy must be 'tensor' or 'channel', got {cfg.strategy!r}")
    if isinstance(cfg, Int8WeightOnlyConfig) and (cfg.method not in ("rtn", "gptq") or not 0 < cfg.damp < 1):
        raise SizewiseError(f"{where}: int8-wo needs method 'rtn' or 'gptq' and damp in (0, 1), got {cfg.method!r}, {cfg.damp}")
    if isinstance(cfg, (Int8WeightOnlyConfig, Int4WeightOnlyConfig)) and cfg.stream not in ("bf16", "fp32"):
        raise SizewiseError(f"{where}: stream must be 'bf16' or 'fp32', got {cfg.stream!r}")
    if isinstance(cfg, Int4WeightOnlyConfig):
        if cfg.method not in ("rtn", "gptq"):
            raise SizewiseError(f"{where}: method must be 'rtn' or 'gptq', got {cfg.method!r}")
        if cfg.zero not in ("float", "int"):
            raise SizewiseError(f"{where}: zero must be 'float' or 'int', got {cfg.zero!r}")
        if cfg.grid not in ("minmax", "mse", "act-mse"):
            raise SizewiseError(f"{where}: grid must be 'minmax', 'mse' or 'act-mse', got {cfg.grid!r}")
        if cfg.embed not in ("bf16", "int8"):
            raise SizewiseError(f"{where}: embed must be 'bf16' or 'int8', got {cfg.embed!r}")
        if cfg.zero == "int" and cfg.grid != "minmax":
            raise SizewiseError(f"{where}: an integer zero point (zero: int) takes grid 'minmax' only, "
                                f"got {cfg.grid!r}: use zero 'float' for a fitted grid")
        if cfg.scale_bits not in (16, 6):
            raise SizewiseError(f"{where}: scale_bits must be 16 (bf16 scale and zero) or 6 (6-bit codes in "
                                f"row super-blocks), got {cfg.scale_bits}")
        if cfg.scale_bits == 6 and cfg.zero != "float":
            raise SizewiseError(f"{where}: scale_bits 6 codes a float zero per group: set zero 'float'")
        if cfg.group_size <= 0 or cfg.group_size % 8:
            raise SizewiseError(f"{where}: group_size must be a positive multiple of 8, got {cfg.group_size}")
        if not 0 < cfg.damp < 1:
            raise SizewiseError(f"{where}: damp must be in (0, 1), got {cfg.damp}")
