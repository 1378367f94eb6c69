"""Read safetensors headers only: names, dtypes, shapes and byte ranges, never tensor data.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the raw
data. We read exactly 8 + N bytes per file, so a 700 GB sharded checkpoint scans in about a
second with memory proportional to the headers. Every inconsistency (short file, header past
the end, a tensor whose byte range is wrong or lies past the end) is a SizewiseError naming
the file, because it means a broken download rather than a bug.
"""
from __future__ import annotations

import json
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import NamedTuple

from sizewise.errors import SizewiseError

INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit (100 MB)

# Storage bits per element, as the safetensors format names its dtypes.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class TensorHeader(NamedTuple):
    """One tensor as the header describes it; `start`/`end` are absolute byte offsets in `file`.

    A NamedTuple rather than a frozen dataclass: a 90k-tensor checkpoint builds 90k of these.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    file: Path

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class DtypeTotal:
    tensors: int = 0
    numel: int = 0
    bytes: int = 0


@dataclass
class SafetensorsScan:
    """All tensors of a checkpoint (one file or all shards) plus byte totals."""

    source: Path
    files: list[Path]
    tensors: list[TensorHeader]
    file_bytes: int  # sum of file sizes on disk (headers + data + padding)
    header_bytes: int  # 8-byte prefixes + JSON headers
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    def by_dtype(self) -> dict[str, DtypeTotal]:
        out: dict[str, DtypeTotal] = defaultdict(DtypeTotal)
        for t in self.tensors:
            d = out[t.dtype]
            d.tensors += 1
            d.numel += t.numel
            d.bytes += t.nbytes
        return dict(sorted(out.items()))


def _check_entry(path: Path, name: str, entry: object, data_start: int, size: int) -> TensorHeader:
    try:
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]  # type: ignore[index]
        b, e = offs
        numel = prod(shape)
        ok = (type(b) is int and type(e) is int and 0 <= b <= e and type(numel) is int
              and all(type(d) is int and d >= 0 for d in shape))
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise SizewiseError(f"{path}: corrupt safetensors header: bad dtype/shape/data_offsets for {name!r}; re-download the file")
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        raise SizewiseError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; upgrade sizewise or check the file")
    need = (numel * bits + 7) // 8
    if need != e - b:
        raise SizewiseError(f"{path}: tensor {name!r} {dtype}{list(shape)} needs {need} bytes but its data_offsets span {e - b}; the file is corrupt")
    if data_start + e > size:
        raise SizewiseError(f"{path}: truncated file: tensor {name!r} ends at byte {data_start + e:,} but the file has {size:,} bytes; re-download it")
    return TensorHeader(name, dtype, tuple(shape), data_start + b, data_start + e, path)


def _read_exact(f, n: int) -> bytes:
    """Raw reads may return short; loop until n bytes or EOF."""
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_header(path: str | Path) -> tuple[list[TensorHeader], dict[str, str], int, int]:
    """Parse one file's header: (tensors, __metadata__, header bytes incl. the 8-byte prefix, file size)."""
    path = Path(path)
    if not path.is_file():
        raise SizewiseError(f"{path}: no such safetensors file")
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:  # unbuffered: not one byte of tensor data is read ahead
        prefix = _read_exact(f, 8)
        if len(prefix) < 8:
            raise SizewiseError(f"{path}: truncated safetensors file ({size} bytes, shorter than the 8-byte header length); re-download it")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise SizewiseError(f"{path}: not a safetensors file (header length {n:,} exceeds the format's 100 MB limit)")
        if 8 + n > size:
            raise SizewiseError(f"{path}: truncated safetensors file: header length {n:,} runs past the file size {size:,}; re-download it")
        raw = _read_exact(f, n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SizewiseError(f"{path}: corrupt safetensors header (invalid JSON: {e.msg if hasattr(e, 'msg') else e}); re-download the file") from None
    if not isinstance(header, dict):
        raise SizewiseError(f"{path}: corrupt safetensors header (not a JSON object); re-download the file")
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    return _entries(path, header, data_start, size), dict(meta), data_start, size


def _entries(path: Path, header: dict, data_start: int, size: int) -> list[TensorHeader]:
    """Fast path for well-formed entries; anything odd goes through _check_entry for its message."""
    out = []
    append, bits_of = out.append, DTYPE_BITS.get
    for name, e in header.items():
        try:
            dtype, shape, (b, end) = e["dtype"], e["shape"], e["data_offsets"]
            numel = prod(shape)
            bits = bits_of(dtype)
            ok = (bits is not None and type(numel) is int and type(b) is int and type(end) is int
                  and 0 <= b <= end and data_start + end <= size and (numel * bits + 7) // 8 == end - b
                  and (not shape or min(shape) >= 0))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            _check_entry(path, name, e, data_start, size)  # raises with the precise reason
            raise SizewiseError(f"{path}: corrupt safetensors header entry {name!r}; re-download the file")
        append(TensorHeader(name, dtype, tuple(shape), data_start + b, data_start + end, path))
    return out


def _index_files(index: Path) -> tuple[list[Path], dict[str, str]]:
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        weight_map = doc["weight_map"]
        assert isinstance(weight_map, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise SizewiseError(f"{index}: not a valid safetensors index (needs a JSON object with 'weight_map')") from None
    files = sorted(set(weight_map.values()))
    return [index.parent / f for f in files], weight_map


def find_checkpoint(path: str | Path) -> tuple[list[Path], Path | None, dict[str, str] | None]:
    """Shard files, index path and its weight_map (None, None without an index) for a file, dir or index."""
    p = Path(path)
    if p.is_dir():
        idx = p / INDEX_NAME
        if idx.is_file():
            return _with_index(idx)
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise SizewiseError(f"{p}: no *.safetensors files or {INDEX_NAME} in this directory")
        return files, None, None
    if p.name.endswith(".index.json"):
        if not p.is_file():
            raise SizewiseError(f"{p}: no such index file")
        return _with_index(p)
    if not p.exists():
        raise SizewiseError(f"{p}: no such file or directory")
    return [p], None, None


def _with_index(idx: Path) -> tuple[list[Path], Path, dict[str, str]]:
    files, weight_map = _index_files(idx)
    return files, idx, weight_map


def scan_safetensors(path: str | Path) -> SafetensorsScan:
    """Headers of a single file, a directory (sharded with an index, or *.safetensors), or an index."""
    p = Path(path)
    files, index, weight_map = find_checkpoint(p)
    tensors: list[TensorHeader] = []
    metadata: dict[str, str] = {}
    file_bytes = header_bytes = 0
    for f in files:
        if not f.is_file():
            raise SizewiseError(f"{f}: shard listed in {index.name if index else 'the checkpoint'} is missing; re-download it")
        ts, meta, hb, size = read_header(f)
        tensors.extend(ts)
        metadata.update(meta)
        file_bytes += size
        header_bytes += hb
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise SizewiseError(f"{t.file}: tensor {t.name!r} appears in more than one shard; the checkpoint is inconsistent")
        seen.add(t.name)
    if weight_map is not None:
        assert index is not None
        rel = {f: str(f.relative_to(index.parent)) for f in files}  # as the index spells each shard
        for t in tensors:
            listed = weight_map.get(t.name)
            if listed != rel[t.file]:
                raise SizewiseError(f"{index}: tensor {t.name!r} is in {t.file.name} but the index says {listed}; the checkpoint is inconsistent")
        missing = set(weight_map) - seen
        if missing:
            name = sorted(missing)[0]
            raise SizewiseError(f"{index}: {len(missing)} indexed tensor(s) are in no shard (e.g. {name!r} -> {weight_map[name]}); re-download the shards")
    return SafetensorsScan(p, files, tensors, file_bytes, header_bytes, metadata)
