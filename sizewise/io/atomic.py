"""Atomic writes: every output goes to a temporary name beside its target and is os.replace()d.

An interrupted run (exception, Ctrl-C, kill) therefore leaves either the old file/directory or
the complete new one, never a half-written mix. Temp names sit in the same directory as the
target so os.replace stays a same-filesystem rename.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sizewise.errors import SizewiseError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; give outputs the modes a plain open()/mkdir() would.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable where the OS allows it (no-op elsewhere)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same directory, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """JSON with a trailing newline; keys keep their insertion order."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside `path`; on success it is os.replace()d onto `path`.

    For writers that want a filename (safetensors.torch.save_file, GGUFWriter) rather than bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory beside `final_dir`; on success it becomes `final_dir`.

    An existing `final_dir` is refused unless `force`; with `force` the old directory is moved
    aside first, the new one renamed into place, and only then is the old one deleted. On an
    exception inside the block the temp directory is removed and the old state is untouched.
    """
    final = Path(final_dir)
    if final.exists() and not force:
        raise SizewiseError(f"{final} already exists: choose another output path or pass --force to replace it")
    if final.exists() and not final.is_dir():
        raise SizewiseError(f"{final} exists and is not a directory: remove it or choose another output path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.rmdir(old)  # only the unique name is wanted; os.replace needs it absent or empty
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        # Put the old directory back if we moved it and the new one did not land.
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
