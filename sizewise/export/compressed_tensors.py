"""`sizewise export SRC --to vllm`: a compressed-tensors checkpoint that vLLM, SGLang and transformers load.

What sizewise already writes is most of it: `checkpoint.save_compressed` stores int4 with integer
zero points and int8-dyn under compressed-tensors names and layouts (`weight_packed` 8 nibbles per
int32 along the input dim, `weight_zero_point` packed along the output dim, `weight_scale` [N, G] or
[N, 1], `weight_shape`; int8 `weight` [N, K]), which is what compressed-tensors' PackedQuantizationCompressor /
IntQuantizationCompressor and vLLM's CompressedTensorsWNA16 / W8A8Int8 schemes read. So the export is
a validated copy: those packed tensors and every kept float tensor are carried over byte for byte, and:

- int8-wo (W8A16) is re-containered, not re-quantized: vLLM treats "int-quantized" as a format with
  quantized activations and refuses a group without input_activations, and its W8A16 int path reads
  "pack-quantized" with num_bits 8 (4 bytes per int32, offset 128). The same integers and scales go
  into that container (scheme `int8-wo-pack`, packed.Int8PackedWeightOnlyLinear). vLLM runs it on GPU
  kernels (Marlin, Machete, Exllama); its CPU build has no 8-bit WNA16 kernel and refuses it (measured:
  benchmarks/results/vllm_check.json), which the report says in a note;
- `quantization_config` is rebuilt from the modules written (no `sizewise_schemes`, which no engine reads);
- `"dequantize": true` when a group is pack-quantized: transformers 5.25 + compressed-tensors 0.20
  build an asymmetric pack-quantized layer on the meta device with an *unpacked* zero point [N, G] and
  then refuse the packed [N/8, G] one that compressed-tensors itself writes and vLLM reads (llm-compressor
  issue #1618), and fail on a symmetric 8-bit one ("Linear has no attribute weight"); with `dequantize`
  transformers decompresses each layer from the checkpoint's own tensors through compressed-tensors'
  compressor instead (in bf16). vLLM ignores the key.

What has no exact target, and what happens to it (`--allow-requantize`, else exit 2 naming the way):
- int4 with a float zero per group (`int4-gN-fz`, the default int4 recipes): compressed-tensors has
  integer zero points only. Refit per group, keeping the better (by squared error against the
  float-zero weights) of: the same scale with the zero rounded to an integer step, or a fresh
  min/max grid; the KLD that adds is measured against SRC on the protocol text.
- an int8 token table (`*-emb8`): vLLM's compressed-tensors path does not quantize embeddings or the
  head: dequantized to bf16 rows (q * scale), measured the same way.
- sparse or shared-mask modules: no compressed-tensors scheme that vLLM runs: refused.
- GPTQ act-order: sizewise's GPTQ quantizes columns in act-order but with static groups and stores
  the integers back in the original column order, so groups stay contiguous and no `g_idx` is needed
  (vLLM's CPU WNA16 kernel has no g_idx path; the GPU ones do not need one here either). Carried over exactly.

Float sources (the bundled GGUF dequantized to fp32, an HF directory, a sizewise fp16/bf16/fp32
checkpoint) become a plain dense HF checkpoint in the stored dtype, or `--type fp16|bf16|fp32`.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from sizewise.errors import SizewiseError
from sizewise.export import common

TYPES = ("fp32", "fp16", "bf16")
_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_INT4_ASYM = re.compile(r"^int4-g(\d+)-asym$")
_INT4_FZ = re.compile(r"^int4-g(\d+)-(fz|s6)$")  # float zero per group (-s6: 6-bit coded scale and zero)
EXACT = {"int8-dyn": "W8A8 int8 (channel weights, dynamic per-token activations, int-quantized)",
         "int8-static": "W8A8 int8 (channel weights, static per-tensor activations, int-quantized)"}
# vLLM fuses these into one layer (QKVParallelLinear, MergedColumnParallelLinear): one scheme for all
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
DEFAULT_MEASURE_TOKENS = 2048


def export(src: str, out: Path, *, type_: str | None = None, allow_requantize: bool = False, force: bool = False,
           measure_tokens: int = DEFAULT_MEASURE_TOKENS) -> dict:
    """Write `out` for vLLM/SGLang/transformers; returns the report (sizewise/export/__init__.py).

    Every check that can refuse runs before anything is written; the KLD is measured on the finished
    temporary directory and the report written into it, so `out` appears whole (report included) or not at all."""
    from sizewise.compression.checkpoint import check_out_path

    t0 = time.perf_counter()
    if type_ is not None and type_ not in TYPES:
        raise SizewiseError(f"unknown --type {type_!r} for --to vllm: valid types are {', '.join(TYPES)}")
    path, kind = common.source_kind(src)
    out = Path(out)
    check_out_path(out, path)
    if out.exists() and not force:
        raise SizewiseError(f"{out} already exists: choose another --out or pass --force to replace it")
    if kind != "gguf":  # a GGUF carries its tokenizer in its metadata
        common.require_tokenizer(path)

    def finish(tmp: Path, report: dict) -> None:
        report["kld_vs_src"] = None
        if report["requantized"] and measure_tokens > 0:
            report["kld_vs_src"], report["measured_on"] = measure_kld(str(path), str(tmp), measure_tokens)
        elif report["requantized"]:
            report["notes"].append("--measure-tokens 0: the KLD of the re-quantized tensors was not measured")
        report["seconds"] = round(time.perf_counter() - t0, 2)
        _write_report(tmp, report)

    if kind == "sizewise":
        from sizewise.compression.checkpoint import read_manifest
        manifest = read_manifest(path)
        if manifest.get("modules"):
            return _export_packed(path, out, manifest, type_, allow_requantize, force, finish)
    return _export_dense(path, out, kind, type_, force, finish)


# --- checks -----------------------------------------------------------------------------------

def check_architecture(cfg: dict, where: Path) -> str:
    """The config's architecture must be a causal LM that transformers (and so vLLM's registry) maps."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = cfg.get("architectures") or []
    mt = cfg.get("model_type")
    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    arch = archs[0] if archs else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(mt or "")
    if not arch or arch not in known or (mt is not None and mt not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise SizewiseError(f"{where}: architecture {arch or '(none)'} (model_type {mt!r}) has no mapping: vLLM, "
                            "SGLang and transformers load causal LMs by a known architecture name, and this one is not one")
    return arch


def check_fused(modules: dict[str, dict], all_linears: set[str], where: Path) -> None:
    """q/k/v and gate/up become one layer in vLLM: they must share one scheme (or all stay float)."""
    for name in sorted(modules):
        prefix, _, leaf = name.rpartition(".")
        for group in FUSED:
            if leaf != group[0]:
                continue
            members = [f"{prefix}.{m}" for m in group if f"{prefix}.{m}" in all_linears or f"{prefix}.{m}" in modules]
            schemes = {modules[m]["scheme"] if m in modules else "float" for m in members}
            if len(schemes) > 1:
                raise SizewiseError(f"{where}: {prefix}.{{{','.join(group)}}} mix schemes {sorted(schemes)}: vLLM fuses "
                                    "them into one layer with one scheme; compress with one group size for all of them")


# --- int4 float zero -> integer zero point ------------------------------------------------------

def refit_integer_zero(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float-zero int4 weights w [N, K] (their dequantized values), with their grid (scale, zero) [N, G] ->
    (q, scale, zp) with an integer zero point: per group the better of (a) the same scale, zero point
    round(8 - zero/scale) and values re-rounded onto it, (b) a fresh min/max grid."""
    from sizewise.compression import quant as Q

    n, k = w.shape
    g = k // group_size
    s_a = scale.to(Q.SCALE_DTYPE)
    zp_a = torch.round(8 - zero.float() / s_a.float()).clamp(0, 15).to(torch.int32)
    q_a = Q.quantize_int4_with(w, s_a, zp_a, group_size)
    s_b, zp_b = Q.group_qparams_int4(w, group_size)
    q_b = Q.quantize_int4_with(w, s_b, zp_b, group_size)

    def err(q, s, zp):
        d = Q.group_dequantize_int4(q, s, zp, group_size) - w.float()
        return (d.reshape(n, g, group_size) ** 2).sum(-1)
    use_a = err(q_a, s_a, zp_a) <= err(q_b, s_b, zp_b)  # [N, G]
    cols = use_a.repeat_interleave(group_size, dim=1)
    return (torch.where(cols, q_a, q_b), torch.where(use_a, s_a.float(), s_b.float()).to(Q.SCALE_DTYPE),
            torch.where(use_a, zp_a, zp_b))


# --- packed sources -----------------------------------------------------------------------------

def _plan(modules: dict[str, dict]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """-> ({module: "exact" | "repack" | "refit" | "densify"}, {unsupported scheme: [modules]}).

    repack: the same integers and scales in another container (int8-wo -> int8-wo-pack, see packed.py)."""
    how, bad = {}, {}
    for name, m in modules.items():
        s = m["scheme"]
        if s == "int8-wo" and not name.endswith("lm_head"):
            how[name] = "repack"
        elif _INT4_ASYM.match(s) or s == "int8-dyn" and not name.endswith("lm_head"):
            how[name] = "exact"
        elif s == "int8-static" and m.get("meta", {}).get("input_strategy", "tensor") == "tensor":
            how[name] = "exact"
        elif _INT4_FZ.match(s):
            how[name] = "refit"
        elif s in ("int8-embed", "int8-wo-tied") or (s == "int8-wo" and name.endswith("lm_head")):
            how[name] = "densify"
        else:
            bad.setdefault(s, []).append(name)
    return how, bad


def _refuse_inexact(how: dict[str, str], modules: dict[str, dict], where: Path) -> None:
    refit = sorted({modules[n]["scheme"] for n, h in how.items() if h == "refit"})
    dense = [n for n, h in how.items() if h == "densify"]
    if refit:
        gs = sorted({int(_INT4_FZ.match(s).group(1)) for s in refit})
        recipes = " or ".join(f"int4-ct-g{g}" for g in gs)
        n = sum(1 for h in how.values() if h == "refit")
        raise SizewiseError(
            f"{where} stores int4 with a float zero per group ({', '.join(refit)}, {n} modules), which compressed-tensors "
            f"cannot hold exactly: compress with --recipe {recipes} (integer zero points, exported bit for bit), "
            "or pass --allow-requantize to refit integer zero points (the KLD this adds is measured and reported)")
    if dense:
        raise SizewiseError(
            f"{where} stores the token table as int8 rows ({', '.join(sorted(dense))}), which vLLM's compressed-tensors "
            "path cannot load: compress without -emb8, or pass --allow-requantize to write it as bf16 rows "
            "(the KLD this adds is measured and reported)")


def _export_packed(d: Path, out: Path, manifest: dict, type_: str | None, allow: bool, force: bool,
                   finish: Callable[[Path, dict], None]) -> dict:
    from sizewise.compression import packed as P
    from sizewise.compression.checkpoint import (INDEX, MANIFEST, _write_safetensors, publish_modes,
                                                 quantization_config, read_tensors)
    from sizewise.compression.token_table import Int8Embedding  # noqa: F401 (registers the int8 table schemes)
    from sizewise.io.atomic import atomic_dir

    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SizewiseError(f"{d / 'config.json'} is missing or damaged ({e.__class__.__name__}): compress again")
    arch = check_architecture(cfg, d)
    modules: dict[str, dict] = dict(manifest["modules"])
    how, bad = _plan(modules)
    if bad:
        s, names = next(iter(bad.items()))
        raise SizewiseError(f"{d}: scheme {s} ({len(names)} modules, e.g. {names[0]}) has no compressed-tensors mapping "
                            "that vLLM runs: export a checkpoint compressed with int4-ct-gN, int8-wo or int8-dyn")
    if not allow:
        _refuse_inexact(how, modules, d)
    tensors = read_tensors(d)  # a truncated or corrupt file is one line here
    aliases = dict(manifest.get("aliases", {}))
    tmanifest = dict(manifest.get("tensors", {}))
    exact: list[str] = []
    requantized: list[dict] = []
    notes: list[str] = []

    def take(prefix: str) -> dict[str, torch.Tensor]:
        keys = [k for k in tensors if k.startswith(prefix) and "." not in k[len(prefix):]]
        return {k[len(prefix):]: tensors.pop(k) for k in keys}

    out_tensors: dict[str, torch.Tensor] = {}
    for name in sorted(modules):
        m, h = modules[name], how[name]
        parts = take(name + ".")
        bias = parts.pop("bias", None)
        if bias is not None:
            out_tensors[f"{name}.bias"] = bias
            exact.append(f"{name}.bias")
        if h == "exact":
            for k, t in parts.items():
                out_tensors[f"{name}.{k}"] = t
            exact.append(f"{name}.weight")
            continue
        cls = P.scheme_class(m["scheme"])
        mod = cls.from_packed({k: v.clone() for k, v in parts.items()}, m["meta"], bias)
        if h == "repack":
            packed = P.Int8PackedWeightOnlyLinear(mod.weight, mod.weight_scale, None)
            for k, t in packed.packed_tensors().items():
                out_tensors[f"{name}.{k}"] = t
            modules[name] = {**m, "scheme": packed.scheme}
            tmanifest[f"{name}.weight"] = {**tmanifest.get(f"{name}.weight", {}), "scheme": packed.scheme}
            exact.append(f"{name}.weight")
            continue
        if h == "refit":
            g = int(m["meta"]["group_size"])
            q, s, zp = refit_integer_zero(mod.dequantized_weight(), mod.weight_scale, mod.weight_zero, g)
            for k, t in P.int4_packed_tensors(q, s, zp).items():
                out_tensors[f"{name}.{k}"] = t
            modules[name] = {**m, "scheme": f"int4-g{g}-asym"}
            tmanifest[f"{name}.weight"] = {**tmanifest.get(f"{name}.weight", {}), "scheme": f"int4-g{g}-asym"}
            requantized.append({"name": f"{name}.weight", "from": m["scheme"], "to": f"int4-g{g}-asym"})
        else:  # densify: an int8 token table, its tied head, or an int8 head
            del modules[name]
            to = type_ or "bf16"
            if getattr(mod, "tied_to", None):
                aliases[f"{name}.weight"] = f"{mod.tied_to}.weight"
                tmanifest.pop(f"{name}.weight", None)
                continue
            w = mod.dequantized_weight().to(_TORCH[to]).contiguous()
            out_tensors[f"{name}.weight"] = w
            tmanifest[f"{name}.weight"] = {"scheme": to, "shape": list(w.shape)}
            requantized.append({"name": f"{name}.weight", "from": m["scheme"], "to": to})
    for k, t in tensors.items():  # everything kept in float (norms, embeddings, heads): as stored
        if type_ and t.is_floating_point() and t.dtype != _TORCH[type_]:
            requantized.append({"name": k, "from": _dt(t.dtype), "to": type_})
            t = t.to(_TORCH[type_])
            tmanifest[k] = {**tmanifest.get(k, {}), "scheme": type_}
        else:
            exact.append(k)
        out_tensors[k] = t
    densified_heads = [n for n, h in how.items() if h == "densify" and n not in modules and n.endswith("lm_head")]
    all_linears = set(cfg.get("quantization_config", {}).get("ignore", [])) | set(modules) | set(densified_heads)
    check_fused(modules, all_linears, d)
    ignore = sorted(all_linears - set(modules))
    qc = quantization_config(modules, ignore)
    out_cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    if not cfg.get("architectures"):  # a config derived from a GGUF has none; vLLM picks the model class by it
        out_cfg["architectures"] = [arch]
        notes.append(f"config.json had no architectures: set to [{arch}] from model_type {cfg.get('model_type')!r}")
    if type_:
        out_cfg["dtype"] = str(_TORCH[type_]).replace("torch.", "")
        out_cfg.pop("torch_dtype", None)
    if qc:
        qc.pop("sizewise_schemes", None)
        if any(_INT4_ASYM.match(m["scheme"]) or m["scheme"] == "int8-wo-pack" for m in modules.values()):
            qc["dequantize"] = True
            sizes = {int(_INT4_ASYM.match(m["scheme"]).group(1)) for m in modules.values() if _INT4_ASYM.match(m["scheme"])}
            if len(sizes) > 1:
                notes.append(f"int4 group sizes {sorted(sizes)} in one checkpoint (fallbacks): vLLM reads each layer's "
                             "config group; transformers' dequantize path applies the first group's scheme to every layer")
        out_cfg["quantization_config"] = qc
    if any(m["scheme"] == "int8-wo-pack" for m in modules.values()):
        notes.append("int8-wo is written as W8A16 pack-quantized (num_bits 8): vLLM runs it on its GPU WNA16 kernels "
                     "(Marlin, Machete, Exllama); vLLM's CPU build has none for 8-bit weights (CPUWNA16 takes 4-bit "
                     "only) and refuses to load it: on a CPU serve int8-dyn or int4-ct-gN instead")
    cal = manifest.get("calibration") or {}
    if cal.get("act_order"):
        notes.append("GPTQ act-order with static groups: integers are stored in the original column order with "
                     "contiguous groups, so no g_idx is written or needed")
    new_manifest = {**manifest, "modules": modules, "tensors": tmanifest, "aliases": aliases}
    schemes: dict[str, int] = {}
    for m in modules.values():
        schemes[m["scheme"]] = schemes.get(m["scheme"], 0) + 1
    report = {"target": "vllm", "out": str(out), "bytes": 0,
              "source": {"path": str(d), "kind": "sizewise", "recipe": manifest.get("recipe_name")},
              "format": (qc or {}).get("format"), "schemes": {s: {"modules": n, "compressed_tensors": ct_scheme(s)}
                                                              for s, n in sorted(schemes.items())},
              "exact": sorted(exact), "requantized": requantized, "notes": notes}
    with atomic_dir(out, force=force) as tmp:
        files = _write_safetensors(out_tensors, tmp, 2 * 10**9)
        (tmp / "config.json").write_text(json.dumps(out_cfg, indent=2, default=str) + "\n")
        for f in d.iterdir():  # tokenizer and generation files, as they are
            if f.is_file() and f.name not in ("config.json", MANIFEST, INDEX) and f.suffix != ".safetensors":
                shutil.copy2(f, tmp / f.name)
        new_manifest["files"] = files
        new_manifest["bytes_on_disk"] = report["bytes"] = sum((tmp / f).stat().st_size for f in files)
        (tmp / MANIFEST).write_text(json.dumps(new_manifest, indent=2) + "\n")
        finish(tmp, report)
        publish_modes(tmp)
    return report


def ct_scheme(s: str) -> str:
    if s == "int8-wo-pack":
        return "W8A16 (int8 channel weights, symmetric, pack-quantized num_bits 8)"
    m = _INT4_ASYM.match(s)
    if m:
        return f"W4A16 asymmetric, group {m.group(1)} (pack-quantized, integer zero points)"
    return EXACT.get(s, s)


# --- float sources --------------------------------------------------------------------------------

def _export_dense(path: Path, out: Path, kind: str, type_: str | None, force: bool,
                  finish: Callable[[Path, dict], None]) -> dict:
    from sizewise.io.atomic import atomic_dir
    from sizewise.io.model_load import load_model

    if kind == "hf":
        from sizewise.io.safetensors_scan import scan_safetensors
        if any(path.glob("*.safetensors")):
            scan_safetensors(path)  # a truncated or corrupt shard is one line before loading
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SizewiseError(f"{path / 'config.json'} is damaged ({e.__class__.__name__}): nothing to export")
        check_architecture(cfg, path)
        if "quantization_config" in cfg:
            raise SizewiseError(f"{path} is already quantized ({cfg['quantization_config'].get('quant_method')}): "
                                "vLLM loads it as it is, there is nothing to export")
    try:
        lm = load_model(str(path), dtype="auto")  # as stored (a GGUF: dequantized to fp32)
    except SizewiseError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers/gguf raise many types on damaged files
        raise SizewiseError(f"cannot read {path} ({e.__class__.__name__}: {str(e).splitlines()[0][:120]}): "
                            "the file is truncated or corrupt")
    model, tok = lm.model, lm.tokenizer
    check_architecture(model.config.to_dict(), path)
    before = {k: t.dtype for k, t in model.state_dict().items()}
    requantized = []
    if type_:
        from sizewise.compression.apply import cast_floats
        cast_floats(model, _TORCH[type_])
        requantized = [{"name": k, "from": _dt(v), "to": type_} for k, v in before.items()
                       if v.is_floating_point and v != _TORCH[type_]]
    notes = []
    if kind == "gguf":
        notes.append("GGUF source: its blocks are dequantized by transformers' GGUF loader; those values are what "
                     "is carried over (the 'exact' list means: the same values sizewise evaluates as the parent)")
    changed = {r["name"] for r in requantized}
    report = {"target": "vllm", "out": str(out), "bytes": 0, "source": {"path": str(path), "kind": kind},
              "format": "dense", "dtype": _dt(next(iter(model.parameters())).dtype), "schemes": {},
              "exact": sorted(k for k in before if k not in changed), "requantized": requantized, "notes": notes}
    if kind == "gguf":
        _forget_gguf_origin(model)
    with atomic_dir(out, force=force) as tmp:
        model.save_pretrained(str(tmp))
        if tok is not None:
            tok.save_pretrained(str(tmp))
        report["bytes"] = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        finish(tmp, report)
    return report


def _forget_gguf_origin(model) -> None:
    """transformers (5.x) marks a GGUF-loaded model as quantized by its GGUF quantizer and refuses to save it,
    though its tensors are already plain dequantized floats: drop that mark so it saves as a dense checkpoint."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property in some versions: it follows hf_quantizer there
            pass
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


# --- measuring and reporting ----------------------------------------------------------------------

def measure_kld(src: str, out: str, n_tokens: int) -> tuple[float, dict]:
    """KL(SRC || export) per token on the protocol text (first n_tokens, 512-token windows), both loaded by
    sizewise (SRC as its parent is loaded for eval: GGUF in fp32; the export on sizewise's kernels)."""
    from sizewise.evaluate import data, metrics
    from sizewise.io.model_load import load_model

    a = load_model(src)
    tokens = data.eval_tokens(a.tokenizer, n_tokens)
    ref = metrics.build_reference(a.model, tokens, metrics.DEFAULT_WINDOW)
    del a
    b = load_model(out)
    q = metrics.compare(b.model, ref)
    return round(q.kld, 6), {"tokens": q.n_tokens, "predicted": q.n_predicted, "window": q.window,
                             "ppl_src": round(ref.quality.ppl, 4), "ppl_export": round(q.ppl, 4),
                             "top1": round(q.top1, 4), "text": "pydoc_data.topics (sorted keys)"}


def _write_report(out: Path, report: dict) -> None:
    """The report goes into the export's own metadata: sizewise.json's "export" (packed) or export.json (dense)."""
    from sizewise.io.atomic import atomic_write_bytes

    m = out / "sizewise.json"
    if m.is_file():
        manifest = json.loads(m.read_text())
        manifest["export"] = report
        atomic_write_bytes(m, (json.dumps(manifest, indent=2) + "\n").encode())
    else:
        atomic_write_bytes(out / "export.json", (json.dumps(report, indent=2) + "\n").encode())


def _dt(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dt, str(dt).replace("torch.", ""))
