"""How fast and how lean is header-only reading? sizewise vs the reference libraries, same run.

1. A DeepSeek-V3-shaped fp8 checkpoint (~690 GB, ~92k tensors, 20 sparse shards: real headers,
   no data) scanned by `sizewise.io.safetensors_scan.scan_safetensors` vs the `safetensors`
   library (`safe_open` + `get_slice(name).get_shape()/get_dtype()` per tensor).
2. The bundled SmolLM2 GGUF read by `sizewise.io.gguf_meta.read_gguf_header` vs gguf-py's
   `GGUFReader` (which memory-maps the file and parses every metadata array).
Median of 3 runs after a warm-up; peak RSS growth of each reader is measured in a fresh process.

Run: .venv/bin/python benchmarks/inspect_headers.py   -> benchmarks/results/inspect_headers.json
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from math import prod
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
V3 = ROOT / "sizewise" / "arch" / "presets" / "deepseek-ai__DeepSeek-V3.json"
BITS = {"BF16": 16, "F32": 32, "F8_E4M3": 8}


def v3_tensors(cfg: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """DeepSeek-V3's published fp8 tensor list (same layout as tests/io/conftest.py)."""
    h, L, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    qr, kvr, nope, rope, vd = (cfg[k] for k in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                                  "qk_rope_head_dim", "v_head_dim"))
    E, mi, inter, vocab = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out: list = [("model.embed_tokens.weight", "BF16", (vocab, h))]

    def lin(n: str, o: int, i: int) -> None:
        out.extend([(f"{n}.weight", "F8_E4M3", (o, i)), (f"{n}.weight_scale_inv", "F32", (-(-o // 128), -(-i // 128)))])

    for i in range(L + cfg["num_nextn_predict_layers"]):
        p = f"model.layers.{i}"
        out.extend([(f"{p}.input_layernorm.weight", "BF16", (h,)), (f"{p}.post_attention_layernorm.weight", "BF16", (h,)),
                    (f"{p}.self_attn.q_a_layernorm.weight", "BF16", (qr,)), (f"{p}.self_attn.kv_a_layernorm.weight", "BF16", (kvr,))])
        lin(f"{p}.self_attn.q_a_proj", qr, h)
        lin(f"{p}.self_attn.q_b_proj", heads * (nope + rope), qr)
        lin(f"{p}.self_attn.kv_a_proj_with_mqa", kvr + rope, h)
        lin(f"{p}.self_attn.kv_b_proj", heads * (nope + vd), kvr)
        lin(f"{p}.self_attn.o_proj", h, heads * vd)
        if i < cfg["first_k_dense_replace"]:
            for n, o, k in (("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter)):
                lin(f"{p}.mlp.{n}", o, k)
            continue
        out.extend([(f"{p}.mlp.gate.weight", "BF16", (E, h)), (f"{p}.mlp.gate.e_score_correction_bias", "F32", (E,))])
        for e in [str(e) for e in range(E)] + ["shared"]:
            base = f"{p}.mlp.shared_experts" if e == "shared" else f"{p}.mlp.experts.{e}"
            for n, o, k in (("gate_proj", mi, h), ("up_proj", mi, h), ("down_proj", h, mi)):
                lin(f"{base}.{n}", o, k)
        if i >= L:  # the multi-token-prediction layer's own embedding, projection and head
            out.extend([(f"{p}.embed_tokens.weight", "BF16", (vocab, h)), (f"{p}.enorm.weight", "BF16", (h,)),
                        (f"{p}.hnorm.weight", "BF16", (h,)), (f"{p}.shared_head.norm.weight", "BF16", (h,)),
                        (f"{p}.shared_head.head.weight", "BF16", (vocab, h))])
            lin(f"{p}.eh_proj", h, 2 * h)
    out.extend([("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (vocab, h))])
    return out


def write_sparse_shards(d: Path, tensors: list, n: int) -> None:
    per = -(-len(tensors) // n)
    weight_map = {}
    for k in range(n):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, dt, shape in tensors[k * per:(k + 1) * per]:
            nb = prod(shape) * BITS[dt] // 8
            header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nb]}
            weight_map[name] = fname
            off += nb
        raw = json.dumps(header).encode()
        with open(d / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + off)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


# reader -> (imports, done before the baseline RSS reading; one full read, which must set n)
READERS = {
    "sizewise scan_safetensors": ("from sizewise.io.safetensors_scan import scan_safetensors as r",
                                  "n = len(r(PATH).tensors)"),
    "safetensors safe_open": (
        "from safetensors import safe_open; import glob",
        "n = 0\n"
        "for f in sorted(glob.glob(PATH + '/*.safetensors')):\n"
        "    with safe_open(f, framework='numpy') as s:\n"
        "        for k in s.keys():\n"
        "            sl = s.get_slice(k); sl.get_shape(); sl.get_dtype(); n += 1"),
    "sizewise read_gguf_header": ("from sizewise.io.gguf_meta import read_gguf_header as r",
                                  "n = len(r(PATH).tensors)"),
    "gguf-py GGUFReader": ("from gguf import GGUFReader", "n = len(GGUFReader(PATH).tensors)"),
}
CHILD = """
import json, resource, statistics, sys, time
PATH = sys.argv[1]
exec(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(4):
    t0 = time.perf_counter()
    exec(sys.argv[3])
    times.append(time.perf_counter() - t0)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"median_s": statistics.median(times[1:]), "rss_growth_bytes": grew, "tensors": n}))
"""


def measure(reader: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, *READERS[reader]], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise SystemExit(f"{reader} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def machine() -> dict:
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from sizewise.io.bundled import bundled_gguf_path

    con = Console()
    tmp = Path(tempfile.mkdtemp(prefix="sizewise-bench-"))
    rows = []
    try:
        cfg = json.loads(V3.read_text())
        write_sparse_shards(tmp, v3_tensors(cfg), 20)
        size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        cases = [("DeepSeek-V3 fp8, 20 sparse shards", str(tmp), "safetensors safe_open",
                  ["sizewise scan_safetensors", "safetensors safe_open"], size),
                 ("bundled SmolLM2 Q4_1 GGUF", str(bundled_gguf_path()), "gguf-py GGUFReader",
                  ["sizewise read_gguf_header", "gguf-py GGUFReader"], bundled_gguf_path().stat().st_size)]
        for label, path, baseline, readers, nbytes in cases:
            res = {r: measure(r, path) for r in readers}
            for r in readers:
                rows.append({"case": label, "checkpoint_bytes": nbytes, "reader": r, **res[r],
                             "speedup_vs_baseline": res[baseline]["median_s"] / res[r]["median_s"], "baseline": baseline})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    t = Table(title="header-only reading (median of 3 after warm-up)")
    for c in ("case", "reader", "tensors", "time", "peak RSS growth", "speed vs baseline"):
        t.add_column(c, justify="left" if c in ("case", "reader") else "right")
    for r in rows:
        t.add_row(f"{r['case']} ({r['checkpoint_bytes'] / 1e9:,.1f} GB)", r["reader"], f"{r['tensors']:,}",
                  f"{r['median_s'] * 1e3:,.0f} ms", f"{r['rss_growth_bytes'] / 2**20:,.0f} MiB",
                  f"{r['speedup_vs_baseline']:.2f}x")
    con.print(t)
    out = ROOT / "benchmarks" / "results" / "inspect_headers.json"
    from sizewise.io.atomic import atomic_write_json
    atomic_write_json(out, {"benchmark": "inspect_headers", "command": " ".join([sys.executable] + sys.argv),
                            "created": datetime.now(timezone.utc).isoformat(), "machine": machine(), "results": rows})
    con.print(f"wrote {out}")


if __name__ == "__main__":
    main()
