"""Compress a safetensors checkpoint tensor by tensor (GPTQ: layer by layer), never holding the model in memory.

Round-to-nearest recipes (fp16/bf16/fp32 casts, int8-wo, int8-dyn, int4 RTN) quantize each weight
independently, so we read one tensor at a time (plain reads at the header's byte offsets, not mmap:
touched mmap pages would count toward RSS until the file is closed), quantize it in row chunks
(bf16 -> fp32 only for a chunk, never the whole model), and flush output shards of bounded size.
The result is byte-for-byte what in-memory `compress` + `save_compressed` writes for the same weights
(tested), with the same manifest. GPTQ reads one decoder layer at a time and carries the calibration
activations forward (`sequential_checkpoint_streaming`); so does int8-dyn with SmoothQuant, which
smooths each layer on its own calibration inputs before quantizing it. int8-static calibrates all
layers at once on the float model and is refused here: use the in-memory path.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from sizewise.compression import packed as P
from sizewise.compression import quant as Q
from sizewise.compression.apply import DTYPES, choose_group_size
from sizewise.compression.checkpoint import (INDEX, MANIFEST, FORMAT_VERSION, build_skeleton, check_out_path,
                                             dtype_name, packed_record, parent_record, publish_modes,
                                             quantization_config, versions)
from sizewise.compression.precision import apply_stream, set_activation_dtype, stored_dtype
from sizewise.compression.recipes import (BaseConfig, DtypeConfig, Int4WeightOnlyConfig, Int8DynamicConfig,
                                          Int8WeightOnlyConfig, recipe_name)
from sizewise.errors import SizewiseError

# output shard bound: keeps peak RSS low. SIZEWISE_STREAM_SHARD_BYTES overrides it (the crash tests use
# it to make a few-MB model write many shards)
STREAM_SHARD_BYTES = int(os.environ.get("SIZEWISE_STREAM_SHARD_BYTES") or 256 * 2**20)
ROW_CHUNK = 256  # rows quantized at once (multiple of 8: zero points pack along rows); bounds the working memory
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I8": torch.int8,
              "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool,
              "F64": torch.float64}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja", "added_tokens.json")


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`). Tensors of a few MB come from the
    heap, not mmap, once glibc's adaptive threshold has grown; freed, they stay in the process and
    fragment, so the peak RSS of a streaming run wandered between 1.0 and 1.3 GB with the same code.
    A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def streamable(config: BaseConfig) -> bool:
    """RTN recipes stream tensor by tensor, GPTQ layer by layer (an int8 token table with either);
    int8-static / torch-dynamic do not stream."""
    return isinstance(config, (DtypeConfig, Int8WeightOnlyConfig, Int8DynamicConfig, Int4WeightOnlyConfig))


def read_tensor(h) -> torch.Tensor:
    """One tensor from a safetensors file by its header entry (sizewise.io.safetensors_scan.TensorHeader)."""
    dt = _ST_DTYPES.get(h.dtype)
    if dt is None:
        raise SizewiseError(f"{h.file}: tensor {h.name!r} has dtype {h.dtype}, which sizewise cannot compress")
    buf = torch.empty(h.nbytes, dtype=torch.uint8)
    with open(h.file, "rb") as f:
        f.seek(h.start)
        n = f.readinto(memoryview(buf.numpy()))
    if n != h.nbytes:
        raise SizewiseError(f"{h.file}: truncated while reading {h.name!r}: re-download the file")
    return buf.view(dt).reshape(h.shape)


def _int4_chunked(w: torch.Tensor, g: int, config: Int4WeightOnlyConfig) -> dict[str, torch.Tensor]:
    """Row-chunked int4 RTN: the same numbers as quantize_int4 on the whole matrix (rows are independent)."""
    if config.scale_bits == 6:  # coded grids: super-blocks lie within rows, so chunks are independent too
        chunks = [Q.fit_int4_sb(w[r:r + ROW_CHUNK], g) for r in range(0, w.shape[0], ROW_CHUNK)]
        return P.int4_s6_tensors(*(torch.cat([c[i] for c in chunks]) for i in range(4)))
    parts: dict[str, list[torch.Tensor]] = {}
    for r in range(0, w.shape[0], ROW_CHUNK):
        q, s, z = Q.quantize_int4(w[r:r + ROW_CHUNK], g, config.zero, config.grid)
        for key, t in P.int4_tensors(q, s, z).items():
            if key != "weight_shape":
                parts.setdefault(key, []).append(t)
    return {**{k: torch.cat(v) for k, v in parts.items()},
            "weight_shape": torch.tensor(list(w.shape), dtype=torch.int64)}


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 in row chunks: the same numbers as on the whole matrix, without its fp32 copy."""
    qs, ss = [], []
    for r in range(0, w.shape[0], ROW_CHUNK):
        q, s = Q.quantize_per_channel_int8(w[r:r + ROW_CHUNK])
        qs.append(q)
        ss.append(s)
    return torch.cat(qs), torch.cat(ss)


def _int8_chunked(w: torch.Tensor) -> dict[str, torch.Tensor]:
    return P.int8_packed_tensors(*_int8_rows(w))


def _token_table_names(skeleton: torch.nn.Module, headers: set[str]) -> tuple[str, str | None, bool]:
    """token_table.table_names, refusing what the streamed table does not carry (a head bias)."""
    from sizewise.compression.token_table import table_names
    try:
        emb_name, head_name, tied = table_names(skeleton)
    except ValueError as e:
        raise SizewiseError(str(e)) from None
    if head_name and f"{head_name}.bias" in headers:
        raise SizewiseError(f"{head_name} has a bias, which the streamed int8 token table does not carry: "
                            "compress in memory (drop --stream)")
    return emb_name, head_name, tied


class _ShardWriter:
    """Collects output tensors and flushes a shard whenever the bound would be passed."""

    def __init__(self, d: Path, shard_bytes: int) -> None:
        self.d, self.limit = d, shard_bytes
        self.cur: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[str, list[str]]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        nb = t.numel() * t.element_size()
        if self.cur and self.size + nb > self.limit:
            self.flush()
        self.cur[name] = t.contiguous()
        self.size += nb

    def flush(self) -> None:
        from safetensors.torch import save_file
        if not self.cur:
            return
        name = f"part-{len(self.parts):05d}.safetensors"
        save_file(self.cur, str(self.d / name), metadata={"format": "pt"})
        self.parts.append((name, list(self.cur)))
        self.cur, self.size = {}, 0
        _release_freed_memory()  # save_file copied the shard to bytes: give those pages back

    def finish(self) -> list[str]:
        self.flush()
        if len(self.parts) == 1:
            os.replace(self.d / self.parts[0][0], self.d / "model.safetensors")
            return ["model.safetensors"]
        n = len(self.parts)
        weight_map, names, total = {}, [], 0
        for i, (tmp, keys) in enumerate(self.parts):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.d / tmp, self.d / final)
            names.append(final)
            weight_map.update({k: final for k in keys})
        total = sum((self.d / f).stat().st_size for f in names)
        (self.d / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        return names


def _prepare(src_dir, out_dir, config):
    """Checks shared by both streaming paths -> (src, cfg dict, scan, skeleton on meta)."""
    from sizewise.io.safetensors_scan import scan_safetensors

    src = Path(src_dir)
    if not (src / "config.json").is_file():
        raise SizewiseError(f"{src} has no config.json: streaming needs an HF safetensors directory")
    check_out_path(out_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    scan = scan_safetensors(src)
    return src, cfg, scan, build_skeleton(cfg)


def _finish(tmp: Path, src: Path, cfg: dict, config: BaseConfig, writer: "_ShardWriter", rec: dict,
            all_linears: list[str], t0: float) -> dict:
    """Close the shards; write config.json (+ quantization_config), tokenizer files and sizewise.json."""
    files = writer.finish()
    out_cfg = dict(cfg)
    if isinstance(config, DtypeConfig):
        out_cfg["dtype"] = str(DTYPES[config.dtype]).replace("torch.", "")
        out_cfg.pop("torch_dtype", None)
    else:  # as apply_stream / set_activation_dtype leave model.config in memory
        out_cfg["dtype"] = "float32" if getattr(config, "stream", "bf16") == "fp32" else "bfloat16"
        out_cfg.pop("torch_dtype", None)
    qc = quantization_config(rec["modules"], sorted(set(all_linears) - set(rec["modules"])))
    if qc:
        out_cfg["quantization_config"] = qc
    (tmp / "config.json").write_text(json.dumps(out_cfg, indent=2) + "\n")
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy2(src / f, tmp / f)
    manifest = {
        "format": FORMAT_VERSION, "parent": parent_record(src), "recipe": config.to_dict(),
        "recipe_name": recipe_name(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "versions": versions(),
        "tensors": rec["tensors"], "modules": rec["modules"], "aliases": rec.get("aliases", {}),
        "fallbacks": rec["fallbacks"],
        "kept_float": rec["kept"], "calibration": rec.get("calibration"), "metrics": {}, "streamed": True,
        "files": files, "bytes_on_disk": sum((tmp / f).stat().st_size for f in files),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    publish_modes(tmp)
    return manifest


def compress_checkpoint_streaming(src_dir: str | Path, out_dir: str | Path, config: BaseConfig,
                                  force: bool = False, shard_bytes: int = STREAM_SHARD_BYTES,
                                  progress: Callable[[int, int], None] | None = None,
                                  calib_tokens: torch.Tensor | None = None) -> dict:
    """src_dir: HF directory (config.json + *.safetensors [+ index]) -> sizewise checkpoint; returns the manifest.

    RTN recipes go tensor by tensor; GPTQ goes decoder layer by decoder layer (needs calib_tokens)."""
    from sizewise.io.atomic import atomic_dir
    from sizewise.compression.apply import target_linears

    t0 = time.perf_counter()
    if isinstance(config, (Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig)) and config.needs_calibration:
        return sequential_checkpoint_streaming(src_dir, out_dir, config, calib_tokens, force, shard_bytes, progress)
    if not streamable(config):
        raise SizewiseError(f"recipe {recipe_name(config) or config.kind} calibrates on activations and cannot be "
                            "streamed: compress it in memory (drop --stream)")
    src, cfg, scan, skeleton = _prepare(src_dir, out_dir, config)
    targets = {name: lin for name, lin in target_linears(skeleton, config)}
    all_linears = [n for n, m in skeleton.named_modules() if type(m) is torch.nn.Linear]
    table = None  # (embedding, head, tied) when the recipe quantizes the token table
    if getattr(config, "embed", "bf16") == "int8":
        table = _token_table_names(skeleton, {h.name for h in scan.tensors})
        pad = skeleton.get_input_embeddings().padding_idx
    del skeleton

    rec: dict = {"modules": {}, "tensors": {}, "fallbacks": {}, "kept": {}}
    modules, tmanifest, fallbacks, kept = rec["modules"], rec["tensors"], rec["fallbacks"], rec["kept"]
    stream = getattr(config, "stream", "bf16")
    with atomic_dir(out_dir, force=force) as tmp:
        w = _ShardWriter(tmp, shard_bytes)
        for i, h in enumerate(scan.tensors):
            t = read_tensor(h)
            mod = h.name[:-len(".weight")] if h.name.endswith(".weight") else None
            if table and mod == table[0] and t.dim() == 2:  # int8 rows; a tied head aliases them
                from sizewise.compression.token_table import Int8Embedding, TiedInt8Head
                emb = Int8Embedding(*_int8_rows(t), pad, torch.float32 if stream == "fp32" else torch.bfloat16)
                _add_packed(w, rec, mod, emb)
                if table[2]:
                    _add_packed(w, rec, table[1], TiedInt8Head(emb, mod))
                del emb
            elif table and mod == table[1] and not table[2] and t.dim() == 2:  # untied head: int8-wo
                _add_packed(w, rec, mod, P.Int8WeightOnlyLinear(*_int8_rows(t), None))
            elif isinstance(config, DtypeConfig):
                if t.is_floating_point():
                    t = t.to(DTYPES[config.dtype])
                w.add(h.name, t)
                tmanifest[h.name] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}
            elif mod in targets and t.dim() == 2:
                n, k = t.shape
                if isinstance(config, Int4WeightOnlyConfig):
                    g, why = choose_group_size(k, n, config)
                    if g is None:
                        kept[mod] = why
                        t = t.to(stored_dtype(h.name, t.dtype, stream))
                        w.add(h.name, t)
                        tmanifest[h.name] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}
                        continue
                    if g != config.group_size:
                        fallbacks[mod] = {"requested": config.group_size, "used": g,
                                          "reason": f"input dim {k} is not a multiple of {config.group_size}"}
                    parts = _int4_chunked(t, g, config)
                    scheme = f"int4-g{g}-{'s6' if config.scale_bits == 6 else 'asym' if config.zero == 'int' else 'fz'}"
                    meta = {"in_features": k, "out_features": n, "group_size": g}
                    kernel = P.int4_kernel_name(P.own_int4_kernel(k, g))
                else:
                    parts = _int8_chunked(t)
                    scheme = "int8-dyn" if isinstance(config, Int8DynamicConfig) else "int8-wo"
                    meta = {"in_features": k, "out_features": n}
                    kernel = P.Int8DynamicLinear.kernel if scheme == "int8-dyn" else "aten._weight_int8pack_mm(bf16)"
                for suffix, pt in parts.items():
                    w.add(f"{mod}.{suffix}", pt)
                modules[mod] = {"scheme": scheme, "kernel": kernel, "meta": meta}
                tmanifest[h.name] = {"scheme": scheme, "shape": [n, k]}
            elif h.name.endswith(".bias") and h.name[:-len(".bias")] in targets:
                t = t.float()  # packed modules keep their bias in fp32, as in memory
                w.add(h.name, t)
                tmanifest[h.name] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}
            else:
                t = t.to(stored_dtype(h.name, t.dtype, stream))
                w.add(h.name, t)
                tmanifest[h.name] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}
            del t
            _release_freed_memory()
            if progress:
                progress(i + 1, len(scan.tensors))
        return _finish(tmp, src, cfg, config, w, rec, all_linears, t0)


def _add_packed(w: "_ShardWriter", rec: dict, name: str, m: P.PackedLinear) -> None:
    """One packed module's tensors and manifest entries, as save_compressed writes them."""
    rec["modules"][name], tensors, entries, alias = packed_record(name, m)
    for key, t in tensors.items():
        w.add(key, t)
    rec["tensors"].update(entries)
    rec.setdefault("aliases", {}).update(alias)


def _add_module_tensors(w: "_ShardWriter", rec: dict, prefix: str, module: torch.nn.Module) -> None:
    """Write a (partly packed) module's tensors the way save_compressed does."""
    packs = {n: m for n, m in module.named_modules() if isinstance(m, P.PackedLinear)}
    for n, m in packs.items():
        _add_packed(w, rec, f"{prefix}.{n}", m)
    for key, t in module.state_dict().items():
        if any(key.startswith(n + ".") for n in packs):
            continue
        w.add(f"{prefix}.{key}", t.detach().contiguous())
        rec["tensors"][f"{prefix}.{key}"] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}


def sequential_checkpoint_streaming(src_dir: str | Path, out_dir: str | Path,
                                    config: Int4WeightOnlyConfig | Int8DynamicConfig | Int8WeightOnlyConfig,
                                    calib_tokens: torch.Tensor | None, force: bool = False,
                                    shard_bytes: int = STREAM_SHARD_BYTES,
                                    progress: Callable[[int, int], None] | None = None) -> dict:
    """GPTQ, or SmoothQuant + int8-dyn, one decoder layer at a time (llm-compressor's sequential
    pipeline, from disk): only the embeddings, the final norm/head, one decoder layer and the
    calibration activations are in memory. Each layer's weights are read, calibrated on the previous
    (already quantized) layers' outputs, quantized, run again to produce the next layer's inputs,
    written, and dropped back to `meta`."""
    from sizewise.compression import gptq as G
    from sizewise.compression.apply import CompressionRecord, LayerQuantizer
    from sizewise.io.atomic import atomic_dir

    t0 = time.perf_counter()
    if calib_tokens is None:
        raise SizewiseError(f"{recipe_name(config) or config.kind} needs calibration tokens: pass --calib-file/--calib-tokens "
                            "or use an RTN recipe")
    src, cfg, scan, model = _prepare(src_dir, out_dir, config)
    headers = {h.name: h for h in scan.tensors}
    all_linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    lprefix, layers = G.decoder_layers(model)
    outside = {k: h for k, h in headers.items() if not k.startswith(lprefix + ".")}
    res = model.load_state_dict({k: read_tensor(h) for k, h in outside.items()}, strict=False, assign=True)
    if res.unexpected_keys:
        raise SizewiseError(f"{src}: tensors the model does not have: {', '.join(res.unexpected_keys[:3])}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    crec = CompressionRecord(recipe=config.to_dict(), recipe_name=recipe_name(config))
    lq = LayerQuantizer(model, config, crec)
    rec: dict = {"modules": {}, "tensors": {}, "fallbacks": crec.fallbacks, "kept": crec.kept,
                 "calibration": {"sequences": int(calib_tokens.shape[0]), "seq_len": int(calib_tokens.shape[1]),
                                 "tokens": int(calib_tokens.numel())}}

    def load_layer(li: int, layer: torch.nn.Module) -> None:
        p = f"{lprefix}.{li}."
        sd = {k[len(p):]: read_tensor(h) for k, h in headers.items() if k.startswith(p)}
        missing = layer.load_state_dict(sd, strict=False, assign=True).missing_keys
        if missing:
            raise SizewiseError(f"{src}: layer {li} lacks {missing[0]}: the checkpoint is incomplete")

    with atomic_dir(out_dir, force=force) as tmp:
        w = _ShardWriter(tmp, shard_bytes)

        fp32_stream = getattr(config, "stream", "bf16") == "fp32"

        def done_layer(li: int, layer: torch.nn.Module) -> None:
            # norms as apply_stream / set_activation_dtype leave them in memory
            set_activation_dtype(layer, torch.float32 if fp32_stream else torch.bfloat16)
            _add_module_tensors(w, rec, f"{lprefix}.{li}", layer)
            layers[li] = layer.to("meta")  # drop the weights: the next layer is read from disk
            _release_freed_memory()

        G.run_sequential(model, calib_tokens, lq.is_target, lq.quantize_layer, progress,
                         before_layer=load_layer, after_layer=done_layer, hessian=lq.hessian)
        lq.finish()  # targeted Linears outside decoder layers: RTN, as in memory
        if getattr(config, "embed", "bf16") == "int8":  # after GPTQ, as in memory
            from sizewise.compression.token_table import quantize_token_table
            quantize_token_table(model)
        apply_stream(model, "fp32" if fp32_stream else "bf16")
        rec["calibration"].update(lq.facts())
        outside_packs = {n: m for n, m in model.named_modules()
                         if isinstance(m, P.PackedLinear) and not n.startswith(lprefix + ".")}
        for n, m in outside_packs.items():
            _add_packed(w, rec, n, m)
        seen: set[int] = set()
        for key, t in model.state_dict().items():
            if key.startswith(lprefix + ".") or any(key.startswith(n + ".") for n in outside_packs):
                continue
            ptr = t.data_ptr()
            if ptr in seen:
                continue  # tied: stored once
            seen.add(ptr)
            w.add(key, t.detach().contiguous())
            rec["tensors"][key] = {"scheme": dtype_name(t.dtype), "shape": list(t.shape)}
        return _finish(tmp, src, cfg, config, w, rec, all_linears, t0)
