"""`sizewise export SRC --to gguf`: a GGUF file for llama.cpp (and Ollama, LM Studio) that carries
sizewise's packed integers over without re-rounding them wherever a GGUF block type holds the same grid.

Mapping (docs/export.md, GGUF section, says why):
  int8-wo / int8-dyn / int8 token table (per-row int8, one scale per row) -> Q8_0: each block of 32
      holds the same int8 codes and its row's scale as fp16.
  int4-gN (float zero: w = (q - 8) * s + z) and int4-ct-gN (integer zero point: w = (q - zp) * s),
      N a multiple of 32 -> Q4_1: each block of 32 holds the same 4-bit codes, d = s and m = z - 8 s
      (or -zp * s) as fp16, so llama.cpp's d * q + m is sizewise's value.
  float tensors -> F32 / F16 / BF16 as stored (1-D tensors always F32, a widening), or `--type`.
  anything else (int8-static's folded activation scales, sparse and shared schemes, a group size that
      is not a multiple of 32) needs --allow-requantize: dequantized, then quantized to --type (default
      Q8_0) by gguf.quants' reference quantizers.
The only value change in the exact path is fp16 rounding of scales and minimums (sizewise stores them
bf16): every export counts the blocks where it happens and the largest change of a dequantized weight.

Names and keys follow llama.cpp's converter (convert_hf_to_gguf.py): the gguf package's TensorNameMap
gives `blk.N.attn_q.weight` etc., llama/mistral q_proj and k_proj rows are permuted to llama.cpp's
rotary layout (a row permutation, so the blocks move whole and stay exact), the tokenizer is the
GPT-2-style BPE vocabulary with the converter's pre-tokenizer fingerprint, merges and special tokens
from gguf.SpecialVocab. A GGUF source is copied key for key and tensor for tensor.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from sizewise.errors import SizewiseError
from sizewise.export import common

# --type values: the block types gguf.quants can write (it has no K-quant quantizers, so Q4_K_M and
# Q6_K are not offered; llama.cpp's own `llama-quantize` can take an F16/Q8_0 export there).
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
FLOAT_TYPES = ("F32", "F16", "BF16")
DEFAULT_REQUANT = "Q8_0"
QK = 32  # elements per block of every type written here
METADATA_KEY = "sizewise.export"

# HF model_type -> (gguf MODEL_ARCH member, permute q/k rows like convert_hf_to_gguf's LlamaModel)
ARCHES: dict[str, tuple[str, bool]] = {
    "llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False), "qwen3": ("QWEN3", False),
}

# convert_hf_to_gguf.get_vocab_base_pre: sha256 of str(tokenizer.encode(CHKTXT)) -> tokenizer.ggml.pre
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 '
          '3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
BPE_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}


@dataclass
class Planned:
    """One tensor as it will be written: raw bytes [rows, bytes per row] of ggml type `ggml`."""

    name: str  # GGUF name
    source: str  # the source's name for it
    perm: np.ndarray | None  # rows were written in this order (llama q/k): row r = source row perm[r]
    data: np.ndarray  # uint8
    ggml: str
    how: str  # "exact" | "requantized"
    src_scheme: str
    changed_blocks: int = 0  # blocks whose dequantized values differ from the source's (fp16 rounding)
    blocks: int = 0
    max_abs_change: float = 0.0


@dataclass
class Plan:
    arch: str  # gguf architecture name ("llama", "qwen2", ...)
    tensors: list[Planned] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kv: Any = None  # callable(writer): every key but sizewise.export


# --- blocks --------------------------------------------------------------------------------------

def _f16(x: np.ndarray, what: str, name: str) -> np.ndarray:
    """float64 values -> fp16, refusing values fp16 cannot hold (a scale over 65504)."""
    if np.any(np.abs(x) > 65504.0):
        raise SizewiseError(f"{name}: a {what} of {float(np.abs(x).max()):.4g} exceeds fp16's range, so no GGUF "
                            "block type holds it: pass --allow-requantize --type F32")
    return x.astype(np.float16)


def q8_0_blocks(q: np.ndarray, scale: np.ndarray, name: str) -> tuple[np.ndarray, dict]:
    """int8 codes [N, K] + one scale per row [N] (float64) -> Q8_0 bytes [N, K/32*34] and rounding stats.
    block_q8_0 = {fp16 d; int8 qs[32]}, value = d * q."""
    n, k = q.shape
    nb = k // QK
    d16 = _f16(scale, "scale", name)
    changed_rows = d16.astype(np.float64) != scale
    d = np.repeat(d16[:, None], nb, axis=1)
    out = np.concatenate([d.reshape(n, nb, 1).view(np.uint8),
                          q.astype(np.int8).reshape(n, nb, QK).view(np.uint8)], axis=-1).reshape(n, nb * 34)
    max_abs = 0.0
    if changed_rows.any():
        amax = np.abs(q[changed_rows].astype(np.float64)).max(axis=1)
        max_abs = float((np.abs(d16[changed_rows].astype(np.float64) - scale[changed_rows]) * amax).max())
    return out, {"blocks": n * nb, "changed_blocks": int(changed_rows.sum()) * nb, "max_abs_change": max_abs}


def q4_1_blocks(q: np.ndarray, d: np.ndarray, m: np.ndarray, group: int, name: str) -> tuple[np.ndarray, dict]:
    """4-bit codes [N, K] in 0..15 + per-group d, m [N, K/group] (float64, value = d * q + m) -> Q4_1 bytes
    [N, K/32*20]. block_q4_1 = {fp16 d; fp16 m; uint8 qs[16]}: element j in the low nibble of qs[j],
    element j+16 in the high nibble."""
    n, k = q.shape
    nb, per = k // QK, group // QK
    d16, m16 = _f16(d, "scale", name), _f16(m, "minimum", name)
    db, mb = np.repeat(d16, per, axis=1), np.repeat(m16, per, axis=1)  # [N, nb]
    qb = q.astype(np.uint8).reshape(n, nb, QK)
    qs = qb[..., :16] | (qb[..., 16:] << 4)
    out = np.concatenate([db.reshape(n, nb, 1).view(np.uint8), mb.reshape(n, nb, 1).view(np.uint8), qs],
                         axis=-1).reshape(n, nb * 20)
    dd = np.repeat(d16.astype(np.float64) - d, per, axis=1)  # [N, nb] change of d and of m per block
    dm = np.repeat(m16.astype(np.float64) - m, per, axis=1)
    changed = (dd != 0) | (dm != 0)
    max_abs = 0.0
    if changed.any():  # q * dd + dm is linear in q: its largest |.| over a block is at the block's min or max code
        lo, hi = qb.min(axis=-1).astype(np.float64), qb.max(axis=-1).astype(np.float64)
        max_abs = float(np.maximum(np.abs(lo * dd + dm), np.abs(hi * dd + dm)).max())
    return out, {"blocks": n * nb, "changed_blocks": int(changed.sum()), "max_abs_change": max_abs}


def float_bytes(w, ggml: str) -> tuple[np.ndarray, bool]:
    """A float tensor -> bytes of F32/F16/BF16 or a gguf.quants type; whether its values survive exactly."""
    import torch
    from gguf import GGMLQuantizationType, quants

    t = w.detach()
    if ggml == "BF16" and t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint8).reshape(*t.shape[:-1], -1), True
    a = t.float().numpy()
    if ggml == "F32":
        return np.ascontiguousarray(a).view(np.uint8).reshape(*a.shape[:-1], -1), True
    if ggml == "F16":
        h = a.astype(np.float16)
        return h.view(np.uint8).reshape(*a.shape[:-1], -1), bool(np.array_equal(h.astype(np.float32), a))
    qt = GGMLQuantizationType[ggml]
    raw = quants.quantize(a, qt)
    back = quants.dequantize(raw, qt).reshape(a.shape)
    return raw.reshape(*a.shape[:-1], -1), bool(np.array_equal(back, a))


# --- name mapping and metadata -------------------------------------------------------------------

def _arch_of(config) -> tuple[str, bool]:
    mt = getattr(config, "model_type", None)
    if mt not in ARCHES:
        raise SizewiseError(f"architecture {mt!r} has no GGUF mapping in sizewise export "
                            f"(mapped: {', '.join(ARCHES)})")
    return ARCHES[mt]


def qk_perm(rows: int, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute as a row index: HF's rotate-half rotary layout ->
    llama.cpp's interleaved pairs. new row r = old row perm[r]."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def _rope(config) -> tuple[float, dict | None]:
    rp = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = rp.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = rp.get("rope_type", rp.get("type", "default"))
    return float(theta), (None if kind in (None, "default") else {**rp, "rope_type": kind})


def _llama3_rope_factors(config, theta: float, dim: int, rs: dict) -> np.ndarray:
    """Llama 3.1's frequency-dependent rotary scaling as the `rope_freqs` factors llama.cpp reads."""
    factor = float(rs.get("factor", 8.0))
    lo, hi = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old = float(rs.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < old / hi:
            out.append(1.0)
        elif wl > old / lo:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def _arch_kv(config, arch: str, file_type: int, name: str):
    import gguf

    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    theta, rs = _rope(config)
    if rs is not None and rs["rope_type"] not in ("linear", "llama3"):
        raise SizewiseError(f"rope scaling {rs['rope_type']!r} has no GGUF mapping in sizewise export "
                            "(mapped: none, linear, llama3)")

    def kv(w) -> None:
        w.add_name(name)
        w.add_context_length(int(config.max_position_embeddings))
        w.add_embedding_length(hidden)
        w.add_block_count(int(config.num_hidden_layers))
        w.add_feed_forward_length(int(config.intermediate_size))
        w.add_head_count(heads)
        w.add_head_count_kv(kv_heads)
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        w.add_rope_dimension_count(head_dim)
        if head_dim != hidden // heads or arch == "qwen3":
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_vocab_size(int(config.vocab_size))
        if rs is not None and rs["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rs["factor"]))
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    extra = None
    if rs is not None and rs["rope_type"] == "llama3":
        extra = _llama3_rope_factors(config, theta, head_dim, rs)
    return kv, extra


def bpe_pre(tokenizer) -> str:
    """tokenizer.ggml.pre: llama.cpp's name for this BPE pre-tokenizer, by the converter's fingerprint.

    The fingerprint hashes token ids, so a new vocabulary behind a known pre-tokenizer never matches;
    the one structure that is unambiguous without it is plain GPT-2 byte-level splitting (a lone
    ByteLevel pre-tokenizer with its built-in regex), which llama.cpp names "gpt-2"."""
    h = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    if h in BPE_PRE:
        return BPE_PRE[h]
    pre = _pre_tokenizer_json(tokenizer)
    if pre is not None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    raise SizewiseError(f"BPE pre-tokenizer not recognised (fingerprint {h[:16]}...): llama.cpp would "
                        f"tokenize differently; known: {', '.join(sorted(set(BPE_PRE.values())))}")


def _pre_tokenizer_json(tokenizer) -> dict | None:
    """The pre_tokenizer entry of a fast tokenizer's tokenizer.json (None where there is none)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None
    try:
        return json.loads(backend.to_str()).get("pre_tokenizer")
    except (ValueError, AttributeError):
        return None


def _looks_special(t: str) -> bool:
    return t in ("<pad>", "<mask>") or (t.startswith("<|") and t.endswith("|>")) or (t.startswith("<｜") and t.endswith("｜>"))


def vocab_kv(d: Path, vocab_size: int):
    """Tokenizer keys from an HF tokenizer directory, the way convert_hf_to_gguf's `_set_vocab_gpt2` writes
    them: every id's token string and type, the pre-tokenizer name, then gguf.SpecialVocab (merges,
    bos/eos/pad ids, add_bos, chat template)."""
    import gguf
    from transformers import AutoTokenizer

    try:
        tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SizewiseError(f"{d} has no tokenizer.json: the GGUF vocabulary is built from it; save the "
                            "tokenizer (fast) into the directory") from None
    except (OSError, ValueError) as e:
        raise SizewiseError(f"{d / 'tokenizer.json'} is unreadable ({e.__class__.__name__}): save the tokenizer again") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = model.get("type", "?") + (" with byte fallback (SentencePiece-style)" if model.get("byte_fallback") else "")
        raise SizewiseError(f"tokenizer type {kind} has no GGUF vocabulary mapping in sizewise export yet "
                            "(mapped: GPT-2-style byte-level BPE)")
    tok = AutoTokenizer.from_pretrained(str(d))
    pre = bpe_pre(tok)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise SizewiseError(f"the tokenizer has ids up to {max(vocab.values())} but vocab_size is {vocab_size}")
    rev = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = rev[i]
        if t in added:
            if (i in decoder and decoder[i].special) or _looks_special(t):
                types.append(gguf.TokenType.CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    special = gguf.SpecialVocab(d, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise SizewiseError(f"{d / 'tokenizer.json'} has no BPE merges: the tokenizer is incomplete")

    def kv(w) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        special.add_to_gguf(w, quiet=True)
    return kv


# --- planning from a torch model (sizewise or HF source) -----------------------------------------

def _scheme(m) -> str:
    return getattr(m, "scheme", type(m).__name__)


def plan_model(model, config, type_: str | None, allow_requantize: bool) -> Plan:
    """Every tensor of `model` (packed or float) -> Planned GGUF tensors, exact wherever a block type fits."""
    import gguf
    import torch

    from sizewise.compression import packed as P
    from sizewise.compression import token_table as TT

    arch_member, permute = _arch_of(config)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch_member]]
    n_layers = int(config.num_hidden_layers)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch_member], n_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = Plan(arch=arch)

    def gname(hf: str) -> str:
        g = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise SizewiseError(f"tensor {hf!r} has no GGUF name for architecture {arch!r}: sizewise export "
                                "maps the standard decoder tensors only")
        return g

    def add(hf: str, data: np.ndarray, ggml: str, how: str, scheme: str, stats: dict | None = None) -> None:
        perm = None
        if permute and (".self_attn.q_proj." in hf or ".self_attn.k_proj." in hf):
            rows = data.shape[0] if data.ndim == 2 else data.size // 4  # a bias is F32: 4 bytes per value
            perm = qk_perm(rows, heads if ".q_proj." in hf else kv_heads)
            data = data[perm] if data.ndim == 2 else data.view(np.float32)[perm].view(np.uint8)
        s = stats or {}
        plan.tensors.append(Planned(gname(hf), hf, perm, np.ascontiguousarray(data), ggml, how, scheme,
                                    s.get("changed_blocks", 0), s.get("blocks", 0), s.get("max_abs_change", 0.0)))

    def requant(hf: str, w: torch.Tensor, scheme: str, why: str) -> None:
        if not allow_requantize:
            raise SizewiseError(f"{hf} is stored as {scheme}, which no GGUF block type holds exactly ({why}): "
                                "pass --allow-requantize to re-quantize it (the added KLD is measured)")
        target = type_ or DEFAULT_REQUANT
        if target not in FLOAT_TYPES and w.shape[-1] % QK:
            target = "F16"
        data, _ = float_bytes(w.float(), target)
        add(hf, data, target, "requantized", scheme)

    packed = {n: m for n, m in model.named_modules() if P.is_packed(m)}
    for name, m in packed.items():
        cls, scheme, hf = type(m), _scheme(m), f"{name}.weight"
        if cls is TT.TiedInt8Head:
            continue  # the token table's own rows: llama.cpp reads token_embd as output when output is absent
        if cls in (P.Int8WeightOnlyLinear, P.Int8DynamicLinear, TT.Int8Embedding):
            q, s = m.weight, m.weight_scale
            if q.shape[1] % QK:
                requant(hf, m.dequantized_weight(), scheme, f"row length {q.shape[1]} is not a multiple of 32")
            else:
                data, st = q8_0_blocks(q.numpy(), s.double().numpy().reshape(-1), hf)
                add(hf, data, "Q8_0", "exact", scheme, st)
                if cls is P.Int8DynamicLinear:
                    plan.notes.append(f"{name}: int8-dyn weights carried exactly as Q8_0; llama.cpp quantizes "
                                      "activations per block of 32, not per token")
        elif isinstance(m, P.Int4WeightOnlyLinear):  # integer zero, float zero, and 6-bit coded (-s6) grids
            g = m.group_size
            if g % QK:
                requant(hf, m.dequantized_weight(), scheme, f"group size {g} is not a multiple of 32")
            else:
                q = m.int_weight().numpy()
                s = m.weight_scale.double().numpy()
                if isinstance(m, P.Int4FloatZeroLinear):  # -s6 too: its codes expanded to bf16 (scale, zero)
                    mn = m.weight_zero.double().numpy() - 8.0 * s
                else:
                    mn = -m.weight_zero_point.double().numpy() * s
                data, st = q4_1_blocks(q, s, mn, g, hf)
                add(hf, data, "Q4_1", "exact", scheme, st)
        else:
            why = {"int8-static": "its calibrated activation scales are folded into the int8 weights"}.get(
                scheme, "GGUF has no block type for this scheme")
            requant(hf, m.dequantized_weight(), scheme, why)
        if getattr(m, "bias", None) is not None and not getattr(m, "tied_to", None):
            data, _ = float_bytes(m.bias.float(), "F32")
            add(f"{name}.bias", data, "F32", "exact", "fp32")
    from sizewise.compression.checkpoint import dtype_name

    for key, t in model.state_dict().items():
        if any(key.startswith(n + ".") for n in packed):
            continue
        if tied and key.startswith("lm_head."):
            continue
        stored = dtype_name(t.dtype)
        if t.ndim < 2:
            data, _ = float_bytes(t, "F32")  # norms and biases: F32, as llama.cpp reads them (a widening)
            add(key, data, "F32", "exact", stored)
            continue
        natural = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}.get(t.dtype)
        if natural is None:
            raise SizewiseError(f"{key} has dtype {t.dtype}, which has no GGUF type")
        target = type_ or natural
        if target not in FLOAT_TYPES and t.shape[-1] % QK:
            plan.notes.append(f"{key}: row length {t.shape[-1]} is not a multiple of 32, kept {natural}")
            target = natural
        data, exact = float_bytes(t, target)
        add(key, data, target, "exact" if exact else "requantized", stored)
    return plan


def _file_type(plan: Plan) -> int:
    import gguf

    counts: dict[str, int] = {}
    for t in plan.tensors:
        if t.data.ndim == 2:
            counts[t.ggml] = counts.get(t.ggml, 0) + t.data.size
    top = max(counts, key=counts.get) if counts else "F32"
    names = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
             "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1"}
    return int(gguf.LlamaFileType[names[top]])


# --- a GGUF source -------------------------------------------------------------------------------

def plan_gguf(path: Path, type_: str | None, allow_requantize: bool) -> Plan:
    """Copy a GGUF: every key and tensor as it is; with --type, float matrices are quantized and
    quantized ones re-quantized (only with --allow-requantize)."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    from sizewise.io.gguf_meta import read_gguf_header

    h = read_gguf_header(path)  # one-line errors for truncated / corrupt headers and data
    if "tokenizer.ggml.tokens" not in h.metadata:
        raise SizewiseError(f"{path} has no tokenizer (tokenizer.ggml.tokens): llama.cpp cannot run it; "
                            "export from a source that carries its tokenizer")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError and others on damage
        raise SizewiseError(f"{path} is corrupt ({str(e).splitlines()[0][:100]}): re-download the file") from None
    plan = Plan(arch=h.architecture)
    fields = [f for f in reader.fields.values()
              if not f.name.startswith("GGUF.") and f.name not in ("general.architecture", METADATA_KEY)]

    def kv(w) -> None:
        from gguf import GGUFValueType
        for f in fields:
            vtype = f.types[0]
            sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    plan.kv = kv
    for t in reader.tensors:
        src_type = t.tensor_type.name
        raw = np.asarray(t.data).view(np.uint8)
        raw = raw.reshape(raw.shape[0], -1) if len(t.shape) >= 2 else raw.reshape(-1)
        target = type_
        if target is None or len(t.shape) < 2 or target == src_type or int(t.shape[0]) % QK:
            plan.tensors.append(Planned(t.name, t.name, None, raw, src_type, "exact", src_type))
            continue
        if src_type not in FLOAT_TYPES and not allow_requantize:
            raise SizewiseError(f"{t.name} is {src_type}: turning it into {target} re-quantizes already quantized "
                                "values; pass --allow-requantize to do it (the added KLD is measured)")
        vals = quants.dequantize(np.asarray(t.data), GGMLQuantizationType[src_type]).astype(np.float32)
        vals = vals.reshape(-1, int(t.shape[0]))
        import torch
        data, exact = float_bytes(torch.from_numpy(vals), target)
        plan.tensors.append(Planned(t.name, t.name, None, data, target, "exact" if exact else "requantized", src_type))
    return plan


# --- writing -------------------------------------------------------------------------------------

def write_gguf(path: Path, plan: Plan, report: dict | None, extra_tensors: dict | None = None) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), plan.arch)
    plan.kv(w)
    if report is not None:
        w.add_string(METADATA_KEY, json.dumps(report, separators=(",", ":")))
    for t in plan.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=gguf.GGMLQuantizationType[t.ggml])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _rounding(plan: Plan) -> dict:
    changed = [t for t in plan.tensors if t.changed_blocks]
    return {
        "what": "sizewise stores int scales and zeros as bf16; GGUF blocks hold d and m as fp16",
        "tensors_checked": sum(1 for t in plan.tensors if t.blocks),
        "blocks_checked": sum(t.blocks for t in plan.tensors),
        "tensors_changed": len(changed),
        "blocks_changed": sum(t.changed_blocks for t in changed),
        "max_abs_change": max((t.max_abs_change for t in changed), default=0.0),
        "by_tensor": {t.name: {"blocks_changed": t.changed_blocks, "blocks": t.blocks,
                               "max_abs_change": t.max_abs_change} for t in changed[:50]},
    }


def _estimate(config, plan: Plan, n_vocab: int) -> dict | None:
    """`sizewise estimate`'s figure for the file written: tensor data of the matching GGUF mix + header."""
    from sizewise.arch.families import inventory_from_config
    from sizewise.size.formats import gguf_header_bytes, gguf_mix, size_in_format

    lin = {t.ggml for t in plan.tensors if t.data.ndim == 2 and not t.name.startswith(("token_embd", "output."))}
    tok = {t.ggml for t in plan.tensors if t.name.startswith(("token_embd", "output."))}
    if len(lin) != 1 or len(tok) != 1 or config is None:
        return None
    fmt = gguf_mix(lin.pop(), tok.pop())
    try:
        inv = inventory_from_config(config.to_dict(), "export")
    except SizewiseError:
        return None
    data = size_in_format(inv, fmt).bytes
    head = gguf_header_bytes(n_vocab, len(plan.tensors))
    return {"format": fmt.name, "tensor_bytes": data, "header_bytes_estimate": head, "bytes": data + head}


def export(src: str, out: Path, *, type_: str | None = None, allow_requantize: bool = False, force: bool = False,
           measure_tokens: int = 2048) -> dict:
    """The common export entry point (sizewise/export/__init__.py) for GGUF."""
    from sizewise.io.atomic import atomic_path

    if type_ is not None and type_ not in TYPES:
        raise SizewiseError(f"unknown --type {type_!r} for --to gguf: valid types are {', '.join(TYPES)}")
    out = Path(out)
    path, kind = common.source_kind(src)
    common.check_out(out, path, force)
    config, model, tokenizer = None, None, None
    if kind == "gguf":
        plan = plan_gguf(path, type_, allow_requantize)
        n_vocab = int(plan_vocab(path))
    else:
        common.require_tokenizer(path)

        try:
            cfg_dict = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise SizewiseError(f"{path / 'config.json'} is missing or damaged ({e.__class__.__name__})") from None
        mt = cfg_dict.get("model_type")
        if mt not in ARCHES:
            raise SizewiseError(f"architecture {mt!r} has no GGUF mapping in sizewise export (mapped: {', '.join(ARCHES)})")
        vkv = vocab_kv(path, int(cfg_dict.get("vocab_size", 0)))  # tokenizer problems before any weights load
        model, tokenizer = _load_torch_source(path, kind)
        config = model.config
        plan = plan_model(model, config, type_, allow_requantize)
        name = str(cfg_dict.get("_name_or_path") or path.name)
        akv, rope_freqs = _arch_kv(config, plan.arch, _file_type(plan), name)
        if rope_freqs is not None:
            plan.tensors.insert(0, Planned("rope_freqs.weight", "(llama3 rope scaling)", None, rope_freqs.view(np.uint8),
                                           "F32", "exact", "computed"))

        def kv(w, akv=akv, vkv=vkv) -> None:
            akv(w)
            vkv(w)
        plan.kv = kv
        n_vocab = int(config.vocab_size)
    exact = [t.name for t in plan.tensors if t.how == "exact"]
    requant = [{"name": t.name, "from": t.src_scheme, "to": t.ggml} for t in plan.tensors if t.how == "requantized"]
    rounding = _rounding(plan)
    report: dict[str, Any] = {
        "target": "gguf", "out": str(out), "bytes": None, "source": {"path": str(path), "kind": kind},
        "architecture": plan.arch, "exact": exact, "requantized": requant,
        "types": _type_counts(plan), "fp16_rounding": rounding, "kld_vs_src": None, "measure": None,
        "estimate": _estimate(config, plan, n_vocab), "notes": list(plan.notes),
    }
    values_change = bool(requant) or rounding["blocks_changed"] > 0
    with atomic_path(out) as tmp:
        if values_change and measure_tokens > 0:
            meas = tmp.with_name(tmp.name + ".measure.gguf") if kind == "gguf" else None  # the loader wants .gguf
            try:
                if meas is not None:
                    write_gguf(meas, plan, None)
                report["measure"] = _measure(path, kind, model, plan, meas, measure_tokens)
            finally:
                if meas is not None:
                    meas.unlink(missing_ok=True)
            report["kld_vs_src"] = report["measure"]["kld"]
        elif values_change:
            report["notes"].append("values changed but --measure-tokens 0: the added KLD was not measured")
        else:
            report["notes"].append("every value is carried over exactly: the export loads the source's own numbers")
        stored = {k: v for k, v in report.items() if k not in ("out", "bytes")}
        write_gguf(tmp, plan, stored)
        report["bytes"] = tmp.stat().st_size
    est = report["estimate"]
    if est:
        est["deviation"] = report["bytes"] / est["bytes"] - 1.0
    report["notes"].append(_summary(report))
    return report


def _summary(r: dict) -> str:
    fr = r["fp16_rounding"]
    if not fr["blocks_checked"]:
        return "no sizewise scales to round (nothing packed was carried over)"
    return (f"fp16 rounding of scales/minimums changed {fr['blocks_changed']:,} of {fr['blocks_checked']:,} blocks "
            f"in {fr['tensors_changed']} of {fr['tensors_checked']} tensors (max |change| of a weight "
            f"{fr['max_abs_change']:.3g})")


def _type_counts(plan: Plan) -> dict:
    out: dict[str, int] = {}
    for t in plan.tensors:
        out[t.ggml] = out.get(t.ggml, 0) + 1
    return out


def plan_vocab(path: Path) -> int:
    from sizewise.io.gguf_meta import GGUFArray, read_gguf_header

    toks = read_gguf_header(path).metadata.get("tokenizer.ggml.tokens")
    return toks.length if isinstance(toks, GGUFArray) else len(toks or [])


def _load_torch_source(path: Path, kind: str):
    from sizewise.io.model_load import load_model

    try:
        lm = load_model(str(path), "auto")
    except SizewiseError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors / transformers raise many types on damage
        raise SizewiseError(f"cannot load {path} ({e.__class__.__name__}: {str(e).splitlines()[0][:100]}): "
                            "the checkpoint is damaged or incomplete") from None
    return lm.model, lm.tokenizer


def _measure(path: Path, kind: str, model, plan: Plan, written: Path | None, n_tokens: int) -> dict:
    """KLD of the export's values against SRC's own values, both in fp32 on the same transformers model, on
    the protocol text. Torch sources: the export side is every written tensor dequantized by
    gguf.quants and put back in the source's row order, so only the value changes are measured. GGUF
    sources: both files loaded by transformers' GGUF loader."""
    import gc

    import torch
    from gguf import GGMLQuantizationType, quants

    from sizewise.io.model_load import load_model

    if kind == "gguf":
        ref_lm = load_model(str(path), "fp32")
        cand = load_model(str(written), "fp32").model
        ref, tok = ref_lm.model, ref_lm.tokenizer
    else:
        state = common.fp32_state_dict(model)
        ref = common.fp32_model(model.config, state)
        for t in plan.tensors:
            if t.how != "requantized" and not t.changed_blocks:
                continue
            vals = quants.dequantize(t.data, GGMLQuantizationType[t.ggml]).reshape(state[t.source].shape)
            if t.perm is not None:
                inv = np.empty_like(t.perm)
                inv[t.perm] = np.arange(t.perm.size)
                vals = vals[inv]
            state[t.source] = torch.from_numpy(np.ascontiguousarray(vals, dtype=np.float32))
        cand = common.fp32_model(model.config, state)
        tok = _tokenizer_of(path)
    r = common.kld(ref, cand, tok, n_tokens)
    del cand, ref
    gc.collect()
    r["how"] = ("the export's values (gguf.quants dequantization of the written blocks) vs the source's values, "
                "both fp32 in transformers, protocol text; llama.cpp's own numerics are not part of this number")
    return r


def _tokenizer_of(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
