"""Read a GGUF file's metadata and tensor infos without touching tensor data.

GGUF (llama.cpp): magic "GGUF", u32 version, u64 tensor count, u64 key/value count, the
key/values, then per tensor (name, n_dims, dims innermost-first, ggml type, data offset), then
aligned data. We parse that header ourselves with buffered reads: it is a few MB at most, and
the big arrays (tokenizer vocab, merges) are skipped over, keeping only their length.
Block sizes of the ggml types come from the `gguf` package's constants.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from sizewise.errors import SizewiseError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_KEEP_ARRAY = 4096  # longer arrays (vocab, merges, scores) are summarised by their length

# GGUF value types -> struct format (scalars); 8 = string, 9 = array.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFArray:
    """A long metadata array we skipped: its element type and length only."""

    type: int
    length: int


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: str  # e.g. "Q4_1", "Q8_0", "F32"
    shape: tuple[int, ...]  # HF / PyTorch order (outermost first), i.e. GGUF dims reversed
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]
    data_start: int
    file_bytes: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Reader:
    """Buffered little/big-endian reader that turns EOF into a SizewiseError naming the file."""

    def __init__(self, f: BinaryIO, path: Path, endian: str) -> None:
        self.f, self.path, self.e = f, path, endian

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise SizewiseError(f"{self.path}: truncated GGUF header (ends at byte {self.f.tell():,}); re-download the file")
        return b

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(self.e + fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("Q")
        if n > 1 << 30:
            raise SizewiseError(f"{self.path}: corrupt GGUF header (string length {n:,}); re-download the file")
        return self.read(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        self.f.seek(n, 1)

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar("I"), self.scalar("Q")
            if n <= MAX_KEEP_ARRAY:
                return [self.value(itype) for _ in range(n)]
            if itype in _SCALAR:
                self.skip(n * struct.calcsize(_SCALAR[itype]))
            elif itype == _STRING:
                for _ in range(n):
                    self.skip(self.scalar("Q"))
            else:
                for _ in range(n):
                    self.value(itype)
            return GGUFArray(itype, n)
        raise SizewiseError(f"{self.path}: corrupt GGUF header (unknown value type {vtype}); re-download the file")


def _ggml_type_name(t: int, path: Path, name: str) -> str:
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        raise SizewiseError(f"{path}: tensor {name!r} has ggml type {t} this gguf package does not know; upgrade gguf") from None


def tensor_nbytes(ggml_type: str, numel: int) -> int:
    """Bytes a tensor of this ggml type takes: whole blocks of (block_size values, type_size bytes)."""
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return numel // block * type_size


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Metadata and tensor infos; validates that every tensor's data lies inside the file."""
    path = Path(path)
    if not path.is_file():
        raise SizewiseError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 16) as f:  # small buffer: read-ahead stays near the header
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise SizewiseError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        raw_version = f.read(4)
        if len(raw_version) < 4:
            raise SizewiseError(f"{path}: truncated GGUF header; re-download the file")
        version = struct.unpack("<I", raw_version)[0]
        endian = "<"
        if version & 0xFFFF == 0:  # a big-endian file read as little-endian
            endian, version = ">", struct.unpack(">I", raw_version)[0]
        if version not in (2, 3):
            raise SizewiseError(f"{path}: unsupported GGUF version {version} (sizewise reads versions 2 and 3)")
        r = _Reader(f, path, endian)
        n_tensors, n_kv = r.scalar("Q"), r.scalar("Q")
        if n_tensors > 10_000_000 or n_kv > 10_000_000:
            raise SizewiseError(f"{path}: corrupt GGUF header ({n_tensors:,} tensors, {n_kv:,} keys); re-download the file")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.scalar("I"))
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar("I")
            if n_dims > 8:
                raise SizewiseError(f"{path}: corrupt GGUF header (tensor {name!r} has {n_dims} dims); re-download the file")
            dims = [r.scalar("Q") for _ in range(n_dims)]
            ggml_type = _ggml_type_name(r.scalar("I"), path, name)
            infos.append((name, dims, ggml_type, r.scalar("Q")))
        header_end = f.tell()
    align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_start = (header_end + align - 1) // align * align
    tensors = []
    for name, dims, ggml_type, off in infos:
        numel = prod(dims)
        block = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]][0]
        if numel % block:
            raise SizewiseError(f"{path}: tensor {name!r} has {numel} values, not a multiple of the {ggml_type} block size {block}; the file is corrupt")
        nbytes = tensor_nbytes(ggml_type, numel)
        start = data_start + off
        if start + nbytes > size:
            raise SizewiseError(f"{path}: truncated file: tensor {name!r} ends at byte {start + nbytes:,} but the file has {size:,} bytes; re-download it")
        tensors.append(GGUFTensor(name, ggml_type, tuple(int(d) for d in reversed(dims)), start, nbytes))
    return GGUFHeader(path, version, metadata, tensors, data_start, size)


def gguf_tensors(path: str | Path) -> list[GGUFTensor]:
    """(name, ggml type, shape in PyTorch order, offset, bytes) of every tensor; no data read."""
    return read_gguf_header(path).tensors


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    return read_gguf_header(path).metadata


# Architectures whose GGUF keys map onto an HF config we can count analytically.
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral"}


def header_to_config(h: GGUFHeader) -> dict[str, Any]:
    """HF-style config dict from GGUF `<arch>.*` keys; SizewiseError for other architectures."""
    arch = h.architecture
    if arch not in _MODEL_TYPES:
        raise SizewiseError(f"{h.path}: GGUF architecture {arch!r} has no config mapping (supported: {', '.join(_MODEL_TYPES)}); "
                            "`sizewise inspect` still reads its tensor headers")
    m = h.metadata

    def key(k: str, default: Any = None, required: bool = True) -> Any:
        full = f"{arch}.{k}"
        if full in m:
            return m[full]
        if required and default is None:
            raise SizewiseError(f"{h.path}: GGUF metadata lacks {full!r}; the file was not written by a standard converter")
        return default

    by_name = {t.name: t for t in h.tensors}
    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    kv_heads = key("attention.head_count_kv", heads)
    vocab = m.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = m.get("tokenizer.ggml.tokens")
        vocab = tokens.length if isinstance(tokens, GGUFArray) else len(tokens or [])
        if "token_embd.weight" in by_name:
            vocab = by_name["token_embd.weight"].shape[0]
    key_length = m.get(f"{arch}.attention.key_length")
    cfg: dict[str, Any] = {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[arch]],
        "model_type": _MODEL_TYPES[arch],
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "vocab_size": int(vocab),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(key("context_length")),
        "tie_word_embeddings": "output.weight" not in by_name,
        "head_dim": int(key_length) if key_length is not None else hidden // heads,
    }
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in by_name
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in by_name
    for k in ("bos_token_id", "eos_token_id", "padding_token_id"):
        v = m.get(f"tokenizer.ggml.{k}")
        if v is not None:
            cfg[k.replace("padding_", "pad_")] = int(v)
    return cfg


def gguf_to_config(path: str | Path) -> dict[str, Any]:
    """HF-style config.json dict for a llama/qwen2/mistral GGUF (what sizewise.arch counts from)."""
    return header_to_config(read_gguf_header(path))
