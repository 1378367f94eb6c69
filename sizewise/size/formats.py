"""Storage formats: the exact bytes a checkpoint takes, payload plus scales, zeros and padding.

Each format is a dataclass value (torchao style: formats are values, not code paths) with a
tensor policy saying which tensors it quantizes. Sizes are computed per tensor from the real
shapes, because per-row, per-group and per-block scales depend on the shapes, not on the
parameter count. Convention: a weight of shape (..., rows, cols) is quantized along `cols`, the
input dimension (HF stores Linear weights as (out_features, in_features); GGUF calls it ne[0]).

GGUF formats follow llama.cpp's own choices (src/llama-quant.cpp, `tensor_allows_quantization`,
`llama_tensor_get_type_impl`, `tensor_type_fallback`, ggml-org/llama.cpp @ 007dbbf3):
  * 1-D tensors (norms, biases) are never quantized and stay F32; the MoE router
    (`ffn_gate_inp`) is never quantized (the converter writes it F32).
  * `output.weight` (or the token embedding when tied) goes to Q6_K unless the file type is
    Q8_0 (then Q8_0), or to Q8_0 when its row length is not a multiple of the block size.
  * Q4_K_M: `attn_v` (and a fused `attn_qkv`) and every `ffn_down*` tensor of a layer get Q6_K
    when `use_more_bits(layer, n_layers)`: the first and last eighth of the layers plus every
    third layer in between; everything else Q4_K; an untied token_embd stays Q4_K. Llama 70B
    (80 layers, GQA) lifts the other attn_v to Q5_K. 8-expert models (Mixtral) put attn_v and
    attn_k at Q8_0 in every file type, and attn_output at Q5_K in Q4_K_M.
  * A row length not divisible by the block size falls back: Q4_K -> Q5_0, Q6_K -> Q8_0, and to
    F16 when even 32 does not divide it.
  * DeepSeek V2/V3: the converter (conversion DeepseekV2Model, `skip_mtp = True`) drops the MTP
    layer, and splits `kv_b_proj` into `attn_k_b` (row length qk_nope_head_dim) and `attn_v_b`
    (row length kv_lora_rank), neither of which llama.cpp treats as attn_v.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import ceil, prod

from sizewise.arch.inventory import ArchInfo, ParamInventory, TensorSpec
from sizewise.errors import SizewiseError

FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

# ggml block types: (elements per block, bytes per block); ggml-common.h block_* structs.
GGML_TYPES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34),   # 32 int8 + fp16 scale            = 8.5 bpw
    "Q4_0": (32, 18),   # 16 B nibbles + fp16 scale        = 4.5 bpw
    "Q4_1": (32, 20),   # 16 B nibbles + fp16 scale + fp16 min = 5.0 bpw
    "Q5_0": (32, 22),   # 16 B nibbles + 4 B high bits + fp16 = 5.5 bpw
    "Q5_1": (32, 24),   # Q5_0 + fp16 min                 = 6.0 bpw
    "Q4_K": (256, 144),  # super-block: 2 fp16 + 12 B 6-bit scales + 128 B nibbles = 4.5 bpw
    "Q5_K": (256, 176),  # 5.5 bpw
    "Q6_K": (256, 210),  # 128 B low + 64 B high + 16 int8 scales + fp16 = 6.5625 bpw
}

# Which tensor kinds each family keeps at high precision by default.
KEEP_DEFAULT = ("embedding", "lm_head", "norm", "bias", "router", "buffer")
KEEP_FLOAT = ("buffer",)
KEEP_GGUF = ("norm", "bias", "router", "buffer")


@dataclass(frozen=True)
class StorageFormat:
    """How a format stores one quantized matrix, and which tensors it leaves alone."""

    name: str
    family: str  # "float" | "fp8-block" | "int-row" | "int-group" | "nf4" | "gguf"
    description: str
    bits: float  # payload bits per quantized weight, before scales
    group: int = 0  # group / block length along the input dim (fp8: square block side)
    scale_bytes: int = 0  # per group / row / block
    zero_bytes: float = 0  # per group (asymmetric int4; 0.5 = a packed 4-bit zero point)
    double_quant: bool = False  # nf4: 8-bit absmax with a second-level fp32 scale
    high_precision: str = "bf16"  # dtype of the kept tensors (GGUF: F32 for 1-D, F16 for 2-D)
    keep_kinds: tuple[str, ...] = KEEP_DEFAULT
    ggml_default: str = ""  # GGUF: the file type's default block type
    keep_names: tuple[str, ...] = ()  # name fragments kept high precision whatever their kind
    token_type: str = ""  # GGUF: ggml type of token_embd / output in place of llama.cpp's rule ("" = the rule)
    notes: tuple[str, ...] = ()

    def matrix_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of one quantized tensor of this shape (not GGUF: see `gguf_tensor_type`)."""
        cols = shape[-1]
        rows = prod(shape[:-1])
        numel = rows * cols
        if self.family == "float":
            return numel * FLOAT_BYTES[self.name]
        if self.family == "fp8-block":
            # DeepSeek-V3 layout (README_WEIGHTS.md): e4m3 payload + weight_scale_inv (fp32) of
            # shape [ceil(out/128), ceil(in/128)]; edge blocks are zero-padded to 128 to compute
            # their scale, and the padding is not stored.
            lead = prod(shape[:-2]) if len(shape) > 2 else 1
            out = shape[-2] if len(shape) >= 2 else 1
            b = self.group
            return numel + lead * ceil(out / b) * ceil(cols / b) * self.scale_bytes
        if self.family == "int-row":
            return numel + rows * self.scale_bytes
        if self.family == "int-group":
            groups = ceil(cols / self.group)  # rows are zero-padded to whole groups
            payload = rows * groups * self.group * int(self.bits) // 8
            # zero points packed 8 per int32 along the output dim (compressed-tensors layout)
            zeros = ceil(rows / 8) * 4 * groups if self.zero_bytes == 0.5 else int(rows * groups * self.zero_bytes)
            return payload + rows * groups * self.scale_bytes + zeros
        if self.family == "int-group-s6":
            # packed nibbles + 6-bit scale and zero codes per group (four in three bytes, over the whole
            # tensor) + three fp16 per row super-block (sizewise.compression.packed.Int4SuperBlockLinear)
            groups = ceil(cols / self.group)
            codes = 2 * ceil(rows * groups / 4) * 3
            return rows * groups * self.group // 2 + codes + rows * (groups // superblock_groups(groups)) * 3 * 2
        if self.family == "nf4":
            # bitsandbytes flattens the tensor: 64-element blocks over numel, last block padded.
            blocks = ceil(numel / 64)
            packed = ceil(numel / 2)
            quant_map = 16 * 4  # the 16-entry NF4 code table (fp32), stored per tensor
            if not self.double_quant:
                return packed + blocks * 4 + quant_map
            # absmax -> uint8, one fp32 absmax per 256 absmax values, fp32 offset, 256-entry code table
            return packed + blocks + ceil(blocks / 256) * 4 + 4 + 256 * 4 + quant_map
        raise AssertionError(self.family)


def superblock_groups(n_groups: int) -> int:
    """Groups per super-block of an int4-gG-s6 row of `n_groups` groups: the smallest divisor of n_groups in
    [16, 32] (>= 16 keeps the three fp16 numbers at or under 3/32 bit per weight), else the whole row.
    Q4_K fixes 8 groups of 32 (256), which a 576-wide row does not hold; these always divide the row."""
    for s in range(16, 33):
        if n_groups % s == 0:
            return s
    return n_groups


def _fmt(name, family, desc, bits, **kw) -> StorageFormat:
    return StorageFormat(name=name, family=family, description=desc, bits=bits, **kw)


def _int4_fmt(g: int, ct: bool) -> StorageFormat:
    """int4-gG: bf16 scale + bf16 float zero per group (aten / gpt-fast layout); int4-ct-gG: bf16 scale +
    4-bit integer zero point (compressed-tensors pack-quantized, what vLLM loads)."""
    name = f"int4-{'ct-' if ct else ''}g{g}"
    zero = "4-bit zero point" if ct else "bf16 zero"
    layout = (f"compressed-tensors pack-quantized layout (what vLLM loads), as `sizewise compress --recipe {name}` "
              "writes it: weight_packed (int32, 8 nibbles), weight_scale (bf16), weight_zero_point (4-bit, "
              "packed 8 per int32 along the output dim)") if ct else (
              f"the gpt-fast / torchao / aten int4 CPU kernel layout, as `sizewise compress --recipe {name}` "
              "writes it: weight_packed (int32, 8 nibbles), weight_scale and weight_zero (bf16, one each per "
              "group; w = (q - 8) * scale + zero)")
    return _fmt(name, "int-group", f"int4 asymmetric, groups of {g}: packed nibbles + bf16 scale + {zero} per group",
                4, group=g, scale_bytes=2, zero_bytes=0.5 if ct else 2,
                notes=(layout, "a row length not divisible by the group is zero-padded to whole groups"))


FORMATS: dict[str, StorageFormat] = {f.name: f for f in (
    _fmt("fp32", "float", "IEEE float32, everything", 32, keep_kinds=KEEP_FLOAT, high_precision="fp32"),
    _fmt("fp16", "float", "IEEE float16, everything", 16, keep_kinds=KEEP_FLOAT, high_precision="fp16"),
    _fmt("bf16", "float", "bfloat16, everything", 16, keep_kinds=KEEP_FLOAT),
    _fmt("fp8", "fp8-block", "e4m3 + one fp32 scale per 128x128 block (DeepSeek-V3 layout)", 8,
         group=128, scale_bytes=4, keep_names=(".eh_proj.",),
         notes=("as DeepSeek-V3/R1 ship: the MTP layer's eh_proj stays bf16",)),
    _fmt("int8", "int-row", "int8 per output channel + one fp16 scale per row", 8, scale_bytes=2,
         notes=("scale dtype fp16 (2 B/row); an fp32 scale adds 2 B/row, <0.1% for rows of 4096",)),
    *(_int4_fmt(g, ct) for ct in (False, True) for g in (32, 64, 128)),
    _fmt("int4-g32-s6", "int-group-s6", "int4 asymmetric, groups of 32, each group's scale and zero as 6-bit "
         "codes against 3 fp16 per row super-block (about 4.46 bpw)", 4, group=32,
         notes=("`sizewise compress --recipe int4-g32-s6` writes it; loaded into the int4 kernel's bf16 "
                "(scale, zero) per group of 32",)),
    _fmt("nf4", "nf4", "bitsandbytes NF4: 4 bit + one fp32 absmax per 64-element block", 4,
         notes=("blocks run over the flattened tensor; the last one is padded",)),
    _fmt("nf4-dq", "nf4", "bitsandbytes NF4 with double quantization (8-bit absmax)", 4, double_quant=True,
         notes=("absmax as uint8 with one fp32 scale per 256 blocks (bnb nested blocksize 256)",)),
    _fmt("q8_0", "gguf", "GGUF Q8_0: 32 int8 + fp16 scale per block (8.5 bpw)", 8.5, group=32,
         keep_kinds=KEEP_GGUF, high_precision="F32", ggml_default="Q8_0"),
    _fmt("q6_k", "gguf", "GGUF Q6_K: 256-blocks, 6.5625 bpw", 6.5625, group=256,
         keep_kinds=KEEP_GGUF, high_precision="F32", ggml_default="Q6_K"),
    _fmt("q4_k_m", "gguf", "GGUF Q4_K_M: Q4_K (4.5 bpw) with Q6_K for output, half of attn_v/ffn_down", 4.5,
         group=256, keep_kinds=KEEP_GGUF, high_precision="F32", ggml_default="Q4_K"),
    _fmt("q4_0", "gguf", "GGUF Q4_0: 32 nibbles + fp16 scale per block (4.5 bpw); output Q6_K", 4.5,
         group=32, keep_kinds=KEEP_GGUF, high_precision="F32", ggml_default="Q4_0"),
    _fmt("q4_1", "gguf", "GGUF Q4_1: 32 nibbles + fp16 scale + fp16 min per block (5.0 bpw); output Q6_K", 5.0,
         group=32, keep_kinds=KEEP_GGUF, high_precision="F32", ggml_default="Q4_1",
         notes=("the bundled SmolLM2-135M-Instruct file is Q4_1: sizewise matches its tensor bytes exactly",)),
)}

_GGUF_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0", "Q4_0": "F16", "Q4_1": "F16", "Q8_0": "F16",
                  "Q5_0": "F16", "Q5_1": "F16"}


def gguf_mix(linear: str, tokens: str) -> StorageFormat:
    """A GGUF file with every decoder matrix in ggml type `linear` and the token table (and an untied
    output) in `tokens`; norms and biases F32. What `sizewise export --to gguf` writes: an int4-gN
    checkpoint becomes Q4_1 with its bf16 token table as BF16 (`gguf_mix("Q4_1", "BF16")`), int8-wo
    becomes Q8_0 + BF16. Name: "gguf:<linear>+<tokens>"."""
    for t in (linear, tokens):
        if t not in GGML_TYPES:
            raise SizewiseError(f"unknown ggml type {t!r}: choose one of {', '.join(GGML_TYPES)}")
    bpw = 8 * GGML_TYPES[linear][1] / GGML_TYPES[linear][0]
    return StorageFormat(name=f"gguf:{linear}+{tokens}", family="gguf", bits=bpw, group=GGML_TYPES[linear][0],
                         description=f"GGUF: {linear} decoder matrices, {tokens} token table, F32 norms",
                         keep_kinds=KEEP_GGUF, high_precision="F32", ggml_default=linear, token_type=tokens)


# GGUF header (metadata + tensor infos), which `size_in_format` leaves out. Measured on the bundled
# SmolLM2-135M Q4_1 file (a GPT-2-style BPE vocabulary with merges): 1,785,664 header bytes for 49,152
# tokens (tokens, token types and 48,900 merges) and 272 tensors = 36.3 B per vocabulary entry; a tensor
# info is its name + 4 + 8 * dims + 4 + 8 bytes. A SentencePiece vocabulary (scores, no merges) is
# smaller, so this is an estimate of a few MB on multi-GB files, exact to about 1 % of a 100 MB one.
GGUF_HEADER_BYTES_PER_TOKEN = 36.0
GGUF_TENSOR_INFO_BYTES = 56


def gguf_header_bytes(vocab_size: int, n_tensors: int, other_metadata: int = 4096) -> int:
    """Estimated GGUF header: vocabulary (GGUF_HEADER_BYTES_PER_TOKEN per entry), tensor infos and
    `other_metadata` bytes of architecture keys and chat template."""
    return int(vocab_size * GGUF_HEADER_BYTES_PER_TOKEN + n_tensors * GGUF_TENSOR_INFO_BYTES + other_metadata)


def get_format(fmt: str | StorageFormat) -> StorageFormat:
    if isinstance(fmt, StorageFormat):
        return fmt
    if str(fmt).startswith("gguf:") and "+" in str(fmt):
        lin, tok = str(fmt)[5:].upper().split("+", 1)
        return gguf_mix(lin, tok)
    key = str(fmt).strip().lower()
    if key not in FORMATS:
        key = key.replace("_", "-") if key.replace("_", "-") in FORMATS else key.replace("-", "_")
    if key not in FORMATS:
        raise SizewiseError(f"unknown storage format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[key]


def with_high_precision(f: StorageFormat, high_precision: str | None) -> StorageFormat:
    """The format as applied to a model held in `high_precision` (fp32 | fp16 | bf16): kept tensors
    take that dtype. int8/int4 scales stay 2-byte (bf16) and int4 zeros 4-bit whatever the model's
    dtype: that is what `sizewise compress` stores, since aten's CPU kernels run on bf16 scales. fp8 block scales, nf4 absmax and GGUF
    layouts are fixed by their formats and do not change."""
    if high_precision is None or f.family in ("gguf", "float"):
        return f
    if high_precision not in FLOAT_BYTES:
        raise SizewiseError(f"unknown high-precision dtype {high_precision!r}: choose one of {', '.join(FLOAT_BYTES)}")
    nb = FLOAT_BYTES[high_precision]
    return replace(f, high_precision=high_precision)


# --- GGUF tensor policy -------------------------------------------------------------------

def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for which layers get more bits in Q4_K_M / Q5_K_M (C integer division)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _ggml_row_type(target: str, cols: int) -> str:
    """tensor_type_fallback: a row length the block does not divide takes a compatible type."""
    t = target
    while GGML_TYPES[t][0] > 1 and cols % GGML_TYPES[t][0]:
        t = _GGUF_FALLBACK[t]
    return t


def _ggml_bytes(shape: tuple[int, ...], gtype: str) -> int:
    blk, size = GGML_TYPES[gtype]
    return prod(shape[:-1]) * (shape[-1] // blk) * size


def _category(spec: TensorSpec) -> str:
    n = spec.name
    if spec.kind == "lm_head":
        return "output"
    if spec.kind == "embedding":
        return "token_embd"
    if any(s in n for s in ("qkv_proj", "query_key_value", "W_pack", "c_attn")):
        return "attn_qkv"
    if ".v_proj." in n:
        return "attn_v"
    if ".k_proj." in n:
        return "attn_k"
    if ".o_proj." in n:
        return "attn_output"
    if any(s in n for s in ("down_proj", ".w2.", "dense_4h_to_h", "fc2")):
        return "ffn_down"
    return "other"


def _layer_indices(spec: TensorSpec, arch: ArchInfo | None) -> list[int]:
    """Which layer each copy of a per-layer tensor sits in (MoE layers follow the dense ones,
    as in DeepSeek's first_k_dense_replace)."""
    if arch is None or arch.num_layers <= 0:
        return list(range(spec.copies))
    n = arch.num_layers
    moe = arch.num_moe_layers
    if spec.group in ("routed_experts", "shared_experts") and moe and spec.copies % moe == 0:
        per = spec.copies // moe
        return [layer for layer in range(n - moe, n) for _ in range(per)]
    if spec.group == "mlp" and moe and moe < n and spec.copies % (n - moe) == 0 and spec.copies % n:
        per = spec.copies // (n - moe)
        return [layer for layer in range(n - moe) for _ in range(per)]
    if spec.copies % n == 0:
        per = spec.copies // n
        return [layer for layer in range(n) for _ in range(per)]
    return [min(c, n - 1) for c in range(spec.copies)]


def gguf_tensor_types(spec: TensorSpec, fmt: StorageFormat, arch: ArchInfo | None = None,
                      tied: bool = False, keep_kinds: tuple[str, ...] | None = None
                      ) -> list[tuple[str, tuple[int, ...], int]]:
    """[(ggml type, shape, copies)] that llama.cpp writes for this spec ([] when it drops it)."""
    keep = fmt.keep_kinds if keep_kinds is None else keep_kinds
    if spec.group == "mtp" and arch is not None and arch.model_type.startswith("deepseek"):
        return []  # llama.cpp's DeepSeek converter skips MTP layers
    if len(spec.shape) < 2 or spec.kind in ("norm", "bias", "buffer", "router"):
        return [("F32", spec.shape, spec.copies)]  # never quantized; converter writes F32
    if fmt.token_type and spec.kind in ("embedding", "lm_head"):
        return [(_ggml_row_type(fmt.token_type, spec.shape[-1]), spec.shape, spec.copies)]
    if spec.kind in keep:
        return [("F16", spec.shape, spec.copies)]
    base = fmt.ggml_default
    cols = spec.shape[-1]
    cat = _category(spec)
    if cat == "output" or (cat == "token_embd" and tied):
        if cols % GGML_TYPES[base][0]:
            t = "Q8_0"
        else:
            t = "Q8_0" if base == "Q8_0" else "Q6_K"
        return [(_ggml_row_type(t, cols), spec.shape, spec.copies)]
    if arch is not None and arch.attention == "mla" and "kv_b_proj" in spec.name and arch.kv_lora_rank:
        h, nope, v = arch.num_attention_heads, arch.qk_nope_head_dim or 0, arch.v_head_dim or 0
        k_b, v_b = (h, arch.kv_lora_rank, nope), (h, v, arch.kv_lora_rank)
        return [(_ggml_row_type(base, s[-1]), s, spec.copies) for s in (k_b, v_b) if prod(s)]
    n_expert = arch.num_experts if arch is not None else 0
    is_70b = (arch is not None and arch.model_type == "llama" and arch.num_layers == 80
              and arch.num_kv_heads != arch.num_attention_heads)  # llama.cpp's LLM_TYPE_70B
    layers = _layer_indices(spec, arch)
    n = arch.num_layers if arch is not None else spec.copies
    counts: dict[str, int] = {}
    for i in layers:
        t = _pick_type(fmt.name, base, cat, i, n, n_expert, is_70b)
        t = _ggml_row_type(t, cols)
        counts[t] = counts.get(t, 0) + 1
    return [(t, spec.shape, c) for t, c in counts.items()]


def _pick_type(ftype: str, base: str, cat: str, i_layer: int, n_layers: int, n_expert: int, is_70b: bool) -> str:
    """llama_tensor_get_type_impl for the file types sizewise offers (no IQ/Q2/Q3 branches).
    attn_v-like tensors (attn_v, fused attn_qkv) are counted one per layer, so their counter
    equals the layer index; ffn_down uses the layer index over all layers."""
    t = base
    if cat in ("attn_v", "attn_qkv"):
        if ftype == "q4_k_m" and use_more_bits(i_layer, n_layers):
            t = "Q6_K"
        if is_70b and t == "Q4_K":
            t = "Q5_K"  # 70B: attn_v is 8x smaller than attn_q, so more bits cost little
        if n_expert == 8:
            t = "Q8_0"  # Mixtral-style 8-expert models
    elif cat == "attn_k":
        if n_expert == 8:
            t = "Q8_0"
    elif cat == "ffn_down":
        if ftype == "q4_k_m" and use_more_bits(i_layer, n_layers):
            t = "Q6_K"
    elif cat == "attn_output":
        if n_expert == 8 and ftype == "q4_k_m":
            t = "Q5_K"
    return t


# --- sizes ---------------------------------------------------------------------------------

@dataclass
class FormatSize:
    format: str
    bytes: int
    quantized_params: int  # params stored in the format's low-precision type(s)
    kept_params: int  # params left at high precision
    bits_per_quantized_weight: float  # effective, incl. scales/zeros/padding
    kept: list[str]  # tensor kinds kept at high precision
    notes: list[str] = field(default_factory=list)
    bytes_by_type: dict[str, int] = field(default_factory=dict)  # storage type -> bytes
    params_by_type: dict[str, int] = field(default_factory=dict)
    dropped_params: int = 0  # tensors the format's converter leaves out (GGUF: DeepSeek MTP)

    @property
    def bits_per_weight(self) -> float:
        """All bytes over all stored params: the file's average."""
        n = self.quantized_params + self.kept_params
        return 8 * self.bytes / n if n else 0.0

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "quantized_params": self.quantized_params,
                "kept_params": self.kept_params,
                "bits_per_quantized_weight": round(self.bits_per_quantized_weight, 4),
                "bits_per_weight": round(self.bits_per_weight, 4), "kept": self.kept,
                "bytes_by_type": self.bytes_by_type, "dropped_params": self.dropped_params,
                "notes": self.notes}


def _kept_dtype_bytes(spec: TensorSpec, f: StorageFormat) -> tuple[str, int]:
    if spec.kind == "buffer":
        return "fp32", 4  # e.g. DeepSeek-V3's e_score_correction_bias is fp32 in every release
    return f.high_precision, FLOAT_BYTES[f.high_precision]


def _tensor_parts(spec: TensorSpec, f: StorageFormat, arch: ArchInfo | None, tied: bool,
                  keep_kinds: tuple[str, ...] | None) -> list[tuple[str, int, int, bool]]:
    """[(storage type, params, bytes, quantized?)] for every copy of this spec."""
    if f.family == "gguf":
        parts = []
        for t, shape, copies in gguf_tensor_types(spec, f, arch, tied, keep_kinds):
            parts.append((t, prod(shape) * copies, _ggml_bytes(shape, t) * copies, t not in ("F32", "F16")))
        return parts
    keep = f.keep_kinds if keep_kinds is None else tuple(keep_kinds)
    quantize = spec.kind not in keep and (f.family == "float" or len(spec.shape) >= 2)
    if keep_kinds is None and any(part in spec.name for part in f.keep_names):
        quantize = False
    if f.family == "float" and spec.kind != "buffer":
        quantize = True  # a float format converts everything but buffers
    if not quantize:
        dt, nb = _kept_dtype_bytes(spec, f)
        return [(dt, spec.total, spec.total * nb, False)]
    return [(f.name, spec.total, f.matrix_bytes(spec.shape) * spec.copies, True)]


def tensor_bytes(spec: TensorSpec, fmt: str | StorageFormat, arch: ArchInfo | None = None,
                 tied: bool | None = None, keep_kinds: tuple[str, ...] | None = None,
                 high_precision: str | None = None) -> int:
    """Bytes of all copies of one TensorSpec in a format (arch needed for Q4_K_M's per-layer rule
    and DeepSeek's GGUF conversion; tied defaults to arch.tie_word_embeddings)."""
    f = with_high_precision(get_format(fmt), high_precision)
    if tied is None:
        tied = bool(arch.tie_word_embeddings) if arch is not None else False
    return sum(p[2] for p in _tensor_parts(spec, f, arch, tied, keep_kinds))


def size_in_format(inv: ParamInventory, fmt: str, keep_kinds: tuple[str, ...] | None = None,
                   high_precision: str | None = None) -> FormatSize:
    """Exact bytes of the whole checkpoint in a format, tensor by tensor.

    keep_kinds: tensor kinds kept at high precision (None: the format's own policy).
    high_precision: dtype of the model being quantized (None: bf16); see `with_high_precision`."""
    f = with_high_precision(get_format(fmt), high_precision)
    if keep_kinds is not None:
        from sizewise.arch.inventory import KINDS
        bad = [k for k in keep_kinds if k not in KINDS]
        if bad:
            raise SizewiseError(f"unknown tensor kind(s) {', '.join(bad)}: choose from {', '.join(KINDS)}")
        keep_kinds = tuple(keep_kinds)
    tied = not any(t.kind == "lm_head" for t in inv.tensors)
    total = q_params = k_params = q_bytes = 0
    by_type: dict[str, int] = {}
    params_by_type: dict[str, int] = {}
    kept_kinds: set[str] = set()
    stored = 0
    for spec in inv.tensors:
        for t, n, b, is_q in _tensor_parts(spec, f, inv.arch, tied, keep_kinds):
            total += b
            stored += n
            by_type[t] = by_type.get(t, 0) + b
            params_by_type[t] = params_by_type.get(t, 0) + n
            if is_q:
                q_params += n
                q_bytes += b
            else:
                k_params += n
                kept_kinds.add(spec.kind)
    notes = list(f.notes)
    dropped = inv.total - stored
    if dropped:
        notes.append(f"{dropped:,} MTP parameters are not written (llama.cpp's DeepSeek converter skips them)")
    if f.family == "gguf":
        notes.append("tensor data only: the GGUF header, tokenizer vocabulary and 32-byte alignment add "
                     "a few MB")
    else:
        notes.append("tensor data only: the safetensors JSON header adds ~100-200 B per tensor")
    return FormatSize(
        format=f.name, bytes=total, quantized_params=q_params, kept_params=k_params,
        bits_per_quantized_weight=8 * q_bytes / q_params if q_params else 0.0,
        kept=[k for k in ("embedding", "lm_head", "norm", "bias", "router", "buffer", "linear") if k in kept_kinds],
        notes=notes, bytes_by_type=by_type, params_by_type=params_by_type, dropped_params=dropped,
    )


def all_sizes(inv: ParamInventory) -> dict[str, FormatSize]:
    return {name: size_in_format(inv, name) for name in FORMATS}
