"""Streaming int4 compression of a checkpoint much larger than the memory it is allowed to use.

Builds a synthetic llama-shaped bf16 checkpoint (random weights, >= 6 GB, written shard by shard
into a temp dir that is deleted afterwards), then in a fresh child process runs
`compress_checkpoint_streaming(src, out, int4-g128)` and records wall time and the child's peak RSS
(VmHWM from /proc/self/status; ru_maxrss would inherit the parent's peak). Baselines in the same run: (1) a child that only imports the same
modules (the floor of any Python+torch process), (2) a child that reads every tensor with the same
reader and does nothing else (I/O time, so quantization cost = ratio to it).

Run: .venv/bin/python benchmarks/bench_streaming.py [--layers 30] [--keep]
  -> benchmarks/results/streaming.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT = 1.5e9

CHILD_COMPRESS = r"""
import json, resource, sys, time
def hwm():
    # VmHWM: this process's own peak RSS. ru_maxrss is not used: Linux carries the parent's
    # high-water mark across fork+exec, so a child would report the benchmark's own peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from sizewise.compression.recipes import RECIPES
from sizewise.compression.streaming import compress_checkpoint_streaming
t = time.perf_counter()
man = compress_checkpoint_streaming(sys.argv[1], sys.argv[2], RECIPES["int4-g128"])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": hwm(),
                  "bytes_on_disk": man["bytes_on_disk"], "modules": len(man["modules"]), "fallbacks": len(man["fallbacks"])}))
"""
CHILD_READ = r"""
import json, resource, sys, time
def hwm():
    # VmHWM: this process's own peak RSS. ru_maxrss is not used: Linux carries the parent's
    # high-water mark across fork+exec, so a child would report the benchmark's own peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from sizewise.compression.streaming import read_tensor
from sizewise.io.safetensors_scan import scan_safetensors
import sizewise.compression.recipes, sizewise.compression.streaming
t = time.perf_counter()
n = 0
for h in scan_safetensors(sys.argv[1]).tensors:
    n += read_tensor(h).numel()
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": hwm(), "numel": n}))
"""
CHILD_IMPORT = r"""
import json, resource
def hwm():
    # VmHWM: this process's own peak RSS. ru_maxrss is not used: Linux carries the parent's
    # high-water mark across fork+exec, so a child would report the benchmark's own peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

import torch, transformers, safetensors
import sizewise.compression.streaming
print(json.dumps({"peak_rss": hwm()}))
"""


def machine() -> dict:
    from sizewise.evaluate.machine import machine_info
    return machine_info()


def write_checkpoint(d: Path, layers: int, shard_bytes: int = 512 * 2**20) -> tuple[int, int]:
    """Llama-shaped (hidden 3072, 24 heads / 8 kv heads, ffn 8192, vocab 32000) bf16, random weights."""
    import torch
    from rich.progress import Progress
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    h, inter, vocab, heads, kv = 3072, 8192, 32000, 24, 8
    hd = h // heads
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=False, dtype="bfloat16")
    d.mkdir(parents=True)
    (d / "config.json").write_text(cfg.to_json_string())
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes += [(f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,)),
                   (f"{p}.self_attn.q_proj.weight", (h, h)), (f"{p}.self_attn.k_proj.weight", (kv * hd, h)),
                   (f"{p}.self_attn.v_proj.weight", (kv * hd, h)), (f"{p}.self_attn.o_proj.weight", (h, h)),
                   (f"{p}.mlp.gate_proj.weight", (inter, h)), (f"{p}.mlp.up_proj.weight", (inter, h)),
                   (f"{p}.mlp.down_proj.weight", (h, inter))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    g = torch.Generator().manual_seed(0)
    shards: list[dict] = [{}]
    size = total = params = 0
    weight_map: dict[str, str] = {}
    names: list[str] = []

    def flush() -> None:
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_file(shards[-1], str(d / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shards[-1]})
        names.append(name)
        shards[-1] = {}

    with Progress(transient=True) as prog:
        task = prog.add_task("write synthetic bf16 checkpoint", total=len(shapes))
        for name, shape in shapes:
            t = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16) if len(shape) == 2 else torch.ones(shape, dtype=torch.bfloat16)
            nb = t.numel() * 2
            if shards[-1] and size + nb > shard_bytes:
                flush()
                size = 0
            shards[-1][name] = t
            size += nb
            total += nb
            params += t.numel()
            prog.advance(task)
        flush()
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}))
    return total, params


def child(code: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"child failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30, help="30 layers = 3.22 B params = 6.4 GB bf16")
    ap.add_argument("--dir", default=None, help="where to build the temp checkpoint (default: system temp)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sizewise-stream-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        src_bytes, params = write_checkpoint(tmp / "src", args.layers)
        write_s = time.perf_counter() - t0
        base = child(CHILD_IMPORT)
        read = child(CHILD_READ, str(tmp / "src"))
        comp = child(CHILD_COMPRESS, str(tmp / "src"), str(tmp / "out"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "streaming int4-g128 compression of a synthetic llama-shaped bf16 checkpoint",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "2 CPU cores; seconds vary with whatever else runs on the machine, peak RSS does not",
        "checkpoint": {"layers": args.layers, "params": params, "bytes": src_bytes, "gb": src_bytes / 1e9,
                       "gib": src_bytes / 2**30, "write_seconds": round(write_s, 1)},
        "compress": {**comp, "peak_rss_gb": comp["peak_rss"] / 1e9, "peak_rss_gib": comp["peak_rss"] / 2**30,
                     "under_limit": comp["peak_rss"] < RSS_LIMIT, "limit_bytes": RSS_LIMIT,
                     "throughput_gb_per_s": src_bytes / 1e9 / comp["seconds"]},
        "baseline_import_only": base,
        "baseline_read_only": read,
        "ratios": {"compress_time_vs_read_only": comp["seconds"] / read["seconds"],
                   "peak_rss_vs_checkpoint": comp["peak_rss"] / src_bytes,
                   "peak_rss_minus_import_floor_gb": (comp["peak_rss"] - base["peak_rss"]) / 1e9,
                   "output_vs_input_bytes": comp["bytes_on_disk"] / src_bytes},
    }
    from sizewise.io.atomic import atomic_write_json
    out = ROOT / "benchmarks" / "results" / "streaming.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)

    t = Table(title="streaming int4-g128 (busy 2-core machine: noisy)")
    for c in ("run", "seconds", "peak RSS", "note"):
        t.add_column(c)
    gb = lambda b: f"{b / 1e9:.2f} GB ({b / 2**30:.2f} GiB)"  # noqa: E731
    t.add_row("import only", "-", gb(base["peak_rss"]), "floor of any torch process")
    t.add_row("read every tensor", f"{read['seconds']:.1f}", gb(read["peak_rss"]), f"{src_bytes / 1e9:.2f} GB bf16 input")
    t.add_row("compress int4-g128", f"{comp['seconds']:.1f}", gb(comp["peak_rss"]),
              f"{comp['modules']} modules -> {comp['bytes_on_disk'] / 1e9:.2f} GB; "
              f"{'under' if comp['peak_rss'] < RSS_LIMIT else 'OVER'} the 1.5 GB limit")
    Console().print(t)
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    main()
