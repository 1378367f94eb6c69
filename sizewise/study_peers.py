"""`sizewise study --peers`: llama.cpp's own quantizer on the same fp32 parent, as rows of the study.

The fair quality anchor at equal bits is the quantizer a user would otherwise run. So the parent is
written as an F32 GGUF by llama.cpp's own converter (`convert_hf_to_gguf.py` from the llama-cpp-python
source distribution, which `make peer` keeps under `<venv>/llama.cpp-src`; where it is absent, by
`sizewise export --to gguf --type F32`, said in the row), quantized with llama.cpp's
`llama_model_quantize` (Q4_0, Q4_K_M, Q5_K_M, Q8_0 by default), and scored by llama.cpp itself on the
study's own windows: perplexity, and KL divergence / top-1 agreement against the study's fp32 parent
logits, the numbers every sizewise row carries. Bits per weight are counted over the decoder Linears as
stored in the file (the types llama.cpp actually chose, fallbacks included), the same count
`decoder_bits` gives for a sizewise checkpoint.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sizewise.errors import SizewiseError

DEFAULT_TYPES = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q8_0")
# the decoder Linears, as llama.cpp names them
DECODER_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SRC_DIR_ENV = "SIZEWISE_LLAMACPP_SRC"


def converter_dir() -> Path | None:
    """llama.cpp's source tree with convert_hf_to_gguf.py and gguf-py ($SIZEWISE_LLAMACPP_SRC, else what
    `make peer` unpacked into the venv), or None."""
    for d in (os.environ.get(SRC_DIR_ENV), str(Path(sys.prefix) / "llama.cpp-src")):
        if d and (Path(d) / "convert_hf_to_gguf.py").is_file() and (Path(d) / "gguf-py").is_dir():
            return Path(d)
    return None


def _ftype(name: str) -> int:
    import llama_cpp

    key = f"LLAMA_FTYPE_MOSTLY_{name}"
    if not hasattr(llama_cpp, key):
        valid = sorted(k[len("LLAMA_FTYPE_MOSTLY_"):] for k in dir(llama_cpp) if k.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise SizewiseError(f"llama.cpp has no quantization type {name!r}: valid types are {', '.join(valid)}")
    return int(getattr(llama_cpp, key))


def parse_types(spec: str | None) -> tuple[str, ...]:
    """'Q4_0,Q4_K_M' -> the names (checked against llama.cpp when it runs); None -> the defaults."""
    if not spec:
        return DEFAULT_TYPES
    names = tuple(t.strip().upper() for t in spec.split(",") if t.strip())
    if not names:
        raise SizewiseError("--peer-types is empty: give e.g. Q4_0,Q4_K_M,Q5_K_M,Q8_0")
    return names


def f32_gguf(source: Path, kind: str, workdir: Path) -> tuple[Path, str]:
    """The parent as an F32 GGUF: llama.cpp's converter over an HF directory of the fp32 parent where
    the converter is available, else sizewise's own exporter. -> (path, how)."""
    from sizewise.export import compressed_tensors as CT
    from sizewise.export import gguf as G

    out = workdir / "parent-f32.gguf"
    conv = converter_dir()
    if conv is not None:
        hf = source
        if kind != "hf":  # a GGUF (or sizewise) parent: the fp32 values the study evaluates, as an HF directory
            hf = workdir / "parent-hf"
            CT.export(str(source), hf, type_="fp32", measure_tokens=0)
        env = {**os.environ, "PYTHONPATH": str(conv / "gguf-py") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        r = subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f32",
                            "--outfile", str(out)], capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode == 0 and out.is_file():
            return out, f"llama.cpp's convert_hf_to_gguf.py ({conv})"
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        how_fallback = f"llama.cpp's converter failed ({tail[0][:120]}); sizewise export --to gguf --type F32"
    else:
        how_fallback = ("sizewise export --to gguf --type F32 (llama.cpp's converter not found: `make peer` "
                        f"unpacks it, or set {SRC_DIR_ENV})")
    G.export(str(source), out, type_="F32", allow_requantize=True, force=True, measure_tokens=0)
    return out, how_fallback


def quantize(f32: Path, out: Path, type_name: str, threads: int) -> tuple[float, list[str]]:
    """llama.cpp's quantizer: f32 -> out as type_name; returns (seconds, its summary warnings). Its log (a
    line per tensor, on the C stderr) goes to a temp file, not the user's terminal."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(type_name)
    params.nthread = threads
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+b") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if rc != 0 or not out.is_file():
        last = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["no log"]
        raise SizewiseError(f"llama.cpp's quantizer failed on {type_name} (return code {rc}: {last[0][:160]})")
    warnings = [ln.split("WARNING:", 1)[1].strip() for ln in text.splitlines() if "required fallback" in ln]
    return time.perf_counter() - t0, warnings


def decoder_bits(path: Path) -> dict:
    """Bits per weight of the decoder Linears as stored in a GGUF file, and which types hold them."""
    from sizewise.io.gguf_meta import read_gguf_header, tensor_nbytes

    h = read_gguf_header(path)
    bits, n, types = 0, 0, {}
    for t in h.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in DECODER_LINEARS and parts[3] == "weight":
            bits += 8 * tensor_nbytes(t.ggml_type, t.numel)
            n += t.numel
            types[t.ggml_type] = types.get(t.ggml_type, 0) + t.numel
    return {"bits_per_weight": bits / n if n else None, "weights": n,
            "types": {k: v / n for k, v in sorted(types.items(), key=lambda kv: -kv[1])}}


def llamacpp_rows(source: Path, kind: str, ref, tokens, threads: int, types: tuple[str, ...] = DEFAULT_TYPES,
                  speed_tokens: int = 512, decode_steps: int = 32, decode_prompt: int = 64,
                  phase=None) -> tuple[list[dict], list[str]]:
    """One row per llama.cpp type: file bytes, decoder bits/weight, quality on the study's windows against
    its fp32 parent (ref), llama.cpp prefill / batch-1 decode tok/s. -> (rows, notes); ([], [why]) when
    llama.cpp is not installed."""
    from sizewise.export import llamacpp as L

    why = L.available()
    if why:
        return [], [f"llama.cpp peers skipped: {why}"]
    import llama_cpp

    for t in types:
        _ftype(t)  # an unknown type fails before anything slow
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="sizewise-study-peers-") as tmp:
        work = Path(tmp)
        if phase:
            phase("F32 GGUF of the parent", 0, 1)
        f32, how = f32_gguf(source, kind, work)
        notes.append(f"llama.cpp {llama_cpp.__version__} rows: the parent written as F32 GGUF by {how}, "
                     "quantized by llama.cpp's llama_model_quantize, scored by llama.cpp on the same windows")
        for ty in types:
            out = work / f"parent-{ty}.gguf"
            if phase:
                phase(f"llama.cpp {ty}", 0, 2)
            qs, qwarn = quantize(f32, out, ty, threads)
            llm = L.open_model(out, n_ctx=max(ref.window, speed_tokens, decode_prompt + decode_steps + 1),
                               threads=threads)
            q = L.compare(llm, ref.windows,
                          reference_logits=(ref.parent_logits(i).numpy() for i in range(len(ref.windows))))
            if phase:
                phase(f"llama.cpp {ty}", 1, 2)
            # speed: median of 3 after a warm-up, llama.cpp alone (its own engine; not a paired ratio)
            ids = list(tokens)
            pre, prompt = ids[:speed_tokens], ids[:decode_prompt]
            p_rates, d_rates = [], []
            for r in range(4):  # round 0 warms up
                pr, dr = L.speed_pass(llm, pre, prompt, decode_steps)
                if r:
                    p_rates.append(pr)
                    d_rates.append(dr)
            del llm
            bits = decoder_bits(out)
            rows.append({"peer": f"llama.cpp {ty}", "engine": f"llama.cpp {llama_cpp.__version__}", "type": ty,
                         "bytes_on_disk": out.stat().st_size, "decoder_bits_per_weight": bits["bits_per_weight"],
                         "decoder_types": bits["types"], "quantize_s": qs, "quantizer_warnings": qwarn,
                         "quality": {"ppl": q["ppl"], "kld": q["kld"], "kld_max": q["kld_max"], "top1": q["top1"],
                                     "n_predicted": q["predicted"]},
                         "speed": {"prefill_tok_s": sorted(p_rates)[1], "decode_b1_tok_s": sorted(d_rates)[1],
                                   "threads": threads}})
    return rows, notes


def sizewise_decoder_bits(manifest: dict) -> float | None:
    """Bits per weight of a sizewise checkpoint's decoder Linears as stored (manifest shapes, formats.py bytes)."""
    from sizewise.arch.inventory import TensorSpec
    from sizewise.compression.sizing import scheme_format
    from sizewise.size.formats import tensor_bytes

    bits, n = 0, 0
    for name, t in manifest.get("tensors", {}).items():
        if ".layers." not in name or not name.endswith(".weight") or not any(
                k in name for k in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")):
            continue
        fmt = scheme_format(t["scheme"])
        if fmt is None:
            return None
        shape = tuple(int(d) for d in t["shape"])
        spec = TensorSpec(name=name, shape=shape, copies=1, group="mlp", kind="linear")
        bits += 8 * tensor_bytes(spec, fmt, tied=False, keep_kinds=())
        numel = 1
        for d in shape:
            numel *= d
        n += numel
    return bits / n if n else None
