"""A model's identity is the hash of its tensor files, so a copy, a move or a rename is the same model.

Why tensor files only: config.json, tokenizer files and our own sizewise.json change without the
weights changing (a re-saved manifest, a tokenizer fix) and a registry keyed on them would split one
model into many. Why streaming + a cache keyed by (path, size, mtime_ns): checkpoints are GB; each
file is read once in 4 MiB chunks and never again while it is unchanged.

  file (.safetensors, .gguf, .onnx)  -> sha256 of its bytes
  directory                          -> sha256 of "name sha256\\n" lines of its tensor files, sorted
  directory with config.json only    -> sha256 of config.json (kind "config")
  preset name                        -> sha256 of "preset <repo id>\\n" + its config.json (kind "preset")
  'bundled'                          -> the bundled GGUF file
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from sizewise.errors import SizewiseError

TENSOR_SUFFIXES = (".safetensors", ".gguf", ".onnx")
ONNX_DATA_SUFFIXES = (".onnx_data", ".onnx.data", ".data")  # ONNX external-data files beside a .onnx
CHUNK = 1 << 22


@dataclass
class FileHash:
    path: str  # resolved absolute path
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class Identity:
    id: str  # sha256 hex, 64 characters
    kind: str  # safetensors | gguf | onnx | config | preset
    name: str  # what a person calls it: 'bundled', a preset's repo id, or the file/dir name
    path: Optional[str]  # resolved path on disk (None for presets)
    files: list[FileHash] = field(default_factory=list)  # what was hashed (for the cache)


Lookup = Callable[[str, int, int], Optional[str]]  # (path, size, mtime_ns) -> cached sha256 or None


def sha256_stream(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def file_hash(path: Path, lookup: Lookup | None = None) -> FileHash:
    st = path.stat()
    p = str(path)
    cached = lookup(p, st.st_size, st.st_mtime_ns) if lookup else None
    digest = cached or sha256_stream(path)
    if not cached and path.stat().st_mtime_ns != st.st_mtime_ns:  # written while we read it
        raise SizewiseError(f"{path} changed while it was being hashed: record it again once it is written")
    return FileHash(p, st.st_size, st.st_mtime_ns, digest)


def tensor_files(d: Path) -> list[Path]:
    files = [p for p in d.iterdir() if p.is_file() and p.name.endswith(TENSOR_SUFFIXES)]
    if any(p.suffix == ".onnx" for p in files):
        files += [p for p in d.iterdir() if p.is_file() and p.name.endswith(ONNX_DATA_SUFFIXES) and p not in files]
    return sorted(files, key=lambda p: p.name)


def _kind(files: list[Path]) -> str:
    for suffix in TENSOR_SUFFIXES:
        if any(f.name.endswith(suffix) for f in files):
            return suffix.lstrip(".")
    return "config"


def identify(spec: str | os.PathLike, lookup: Lookup | None = None) -> Identity:
    """Hash what `spec` names (see the module docstring); SizewiseError if it names nothing hashable."""
    s = str(spec)
    if s == "bundled":
        from sizewise.io.bundled import bundled_gguf_path
        ident = identify(bundled_gguf_path(), lookup)
        ident.name = "bundled"
        return ident
    path = Path(s).expanduser()
    if path.is_file():
        path = path.resolve()
        if not path.name.endswith(TENSOR_SUFFIXES) and path.name != "config.json":
            raise SizewiseError(f"{s} is not a model file: give a .safetensors, .gguf or .onnx file or a model directory")
        fh = file_hash(path, lookup)
        return Identity(fh.sha256, _kind([path]), path.name, str(path), [fh])
    if path.is_dir():
        path = path.resolve()
        files = tensor_files(path) or ([path / "config.json"] if (path / "config.json").is_file() else [])
        if not files:
            raise SizewiseError(f"{s} holds no tensor files (.safetensors, .gguf, .onnx) and no config.json: nothing to record")
        hashes = [file_hash(f, lookup) for f in files]
        h = hashlib.sha256()
        for f, fh in zip(files, hashes):
            h.update(f"{f.name} {fh.sha256}\n".encode())
        return Identity(h.hexdigest(), _kind(files), path.name, str(path), hashes)
    if s.endswith((".json", ".gguf", ".safetensors", ".onnx")) or os.sep in s and not _repo_like(s):
        raise SizewiseError(f"model not found: {s} (give an existing file or directory, 'bundled' or a preset name)")
    from sizewise.arch.presets import find_preset
    p = find_preset(s)  # raises SizewiseError with suggestions for an unknown name
    h = hashlib.sha256(f"preset {p.repo_id}\n".encode() + Path(p.path).read_bytes())
    return Identity(h.hexdigest(), "preset", p.repo_id, None, [])


def _repo_like(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~", "/"))
