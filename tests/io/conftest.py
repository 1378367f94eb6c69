"""Helpers for header tests: write safetensors headers over sparse files (no data written)."""
from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

import pytest

BITS = {"BF16": 16, "F16": 16, "F32": 32, "F8_E4M3": 8, "I32": 32, "U8": 8}


def write_sparse_safetensors(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]],
                             metadata: dict | None = None) -> int:
    """A real safetensors header for `tensors` (name, dtype, shape), then a hole for the data.

    Returns the file size. f.truncate extends the file sparsely, so 30 GB shards cost no disk.
    """
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for name, dtype, shape in tensors:
        n = prod(shape) * BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + off)
    return 8 + len(raw) + off


def write_sharded(dirpath: Path, tensors: list[tuple[str, str, tuple[int, ...]]], n_shards: int) -> list[Path]:
    """Split tensors over n_shards sparse files and write model.safetensors.index.json."""
    dirpath.mkdir(parents=True, exist_ok=True)
    per = -(-len(tensors) // n_shards)
    files, weight_map, total = [], {}, 0
    for k in range(n_shards):
        chunk = tensors[k * per:(k + 1) * per]
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        write_sparse_safetensors(dirpath / fname, chunk)
        files.append(dirpath / fname)
        for name, dtype, shape in chunk:
            weight_map[name] = fname
            total += prod(shape) * BITS[dtype] // 8
    (dirpath / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return files


def deepseek_v3_tensors(cfg: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """The tensor list of DeepSeek-V3's published fp8 checkpoint, written from its modeling code.

    Linear weights are F8_E4M3 with an F32 `weight_scale_inv` per 128x128 block; embeddings,
    norms, the router and the head are BF16; the score-correction bias is F32. Layer
    `num_hidden_layers` is the multi-token-prediction layer.
    """
    h, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, qr, kvr = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    E, mi, inter, vocab = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out: list = []

    def lin(name: str, o: int, i: int) -> None:
        out.append((f"{name}.weight", "F8_E4M3", (o, i)))
        out.append((f"{name}.weight_scale_inv", "F32", (-(-o // 128), -(-i // 128))))

    out.append(("model.embed_tokens.weight", "BF16", (vocab, h)))
    for i in range(L + cfg["num_nextn_predict_layers"]):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", "BF16", (h,)), (f"{p}.post_attention_layernorm.weight", "BF16", (h,))]
        a = f"{p}.self_attn"
        lin(f"{a}.q_a_proj", qr, h)
        out.append((f"{a}.q_a_layernorm.weight", "BF16", (qr,)))
        lin(f"{a}.q_b_proj", heads * (nope + rope), qr)
        lin(f"{a}.kv_a_proj_with_mqa", kvr + rope, h)
        out.append((f"{a}.kv_a_layernorm.weight", "BF16", (kvr,)))
        lin(f"{a}.kv_b_proj", heads * (nope + vd), kvr)
        lin(f"{a}.o_proj", h, heads * vd)
        if i < cfg["first_k_dense_replace"]:
            lin(f"{p}.mlp.gate_proj", inter, h)
            lin(f"{p}.mlp.up_proj", inter, h)
            lin(f"{p}.mlp.down_proj", h, inter)
        else:
            out.append((f"{p}.mlp.gate.weight", "BF16", (E, h)))
            out.append((f"{p}.mlp.gate.e_score_correction_bias", "F32", (E,)))
            for e in range(E):
                lin(f"{p}.mlp.experts.{e}.gate_proj", mi, h)
                lin(f"{p}.mlp.experts.{e}.up_proj", mi, h)
                lin(f"{p}.mlp.experts.{e}.down_proj", h, mi)
            s = cfg["n_shared_experts"] * mi
            lin(f"{p}.mlp.shared_experts.gate_proj", s, h)
            lin(f"{p}.mlp.shared_experts.up_proj", s, h)
            lin(f"{p}.mlp.shared_experts.down_proj", h, s)
        if i >= L:  # the MTP layer's own embedding, projections and head
            out += [(f"{p}.embed_tokens.weight", "BF16", (vocab, h)), (f"{p}.enorm.weight", "BF16", (h,)),
                    (f"{p}.hnorm.weight", "BF16", (h,)), (f"{p}.shared_head.norm.weight", "BF16", (h,)),
                    (f"{p}.shared_head.head.weight", "BF16", (vocab, h))]
            lin(f"{p}.eh_proj", h, 2 * h)
    out += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (vocab, h))]
    return out


V3_CONFIG = Path("/work/shared/reference-configs/deepseek-ai__DeepSeek-V3.json")


@pytest.fixture(scope="session")
def v3_config() -> dict:
    from importlib.resources import files
    # Prefer the copy the arch package ships; fall back to the shared reference file.
    for cand in (files("sizewise.arch") / "presets" / "deepseek-ai__DeepSeek-V3.json", V3_CONFIG):
        try:
            return json.loads(Path(str(cand)).read_text())
        except OSError:
            continue
    pytest.fail("no DeepSeek-V3 config.json found (sizewise/arch/presets/deepseek-ai__DeepSeek-V3.json)")


@pytest.fixture(scope="session")
def v3_sharded(tmp_path_factory, v3_config) -> Path:
    """A DeepSeek-V3-shaped fp8 checkpoint of ~690 GB: 20 sparse shards, real headers, no data."""
    d = tmp_path_factory.mktemp("v3")
    write_sharded(d, deepseek_v3_tensors(v3_config), 20)
    (d / "config.json").write_text(json.dumps(v3_config))
    return d
