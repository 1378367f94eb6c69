"""Atomic writes: every output goes to a temporary name beside its target and is os.replace()d.

An interrupted run (exception, Ctrl-C, SIGKILL) therefore leaves either the old file/directory or
the complete new one, never a half-written mix. Temp names sit in the same directory as the
target so the rename stays a same-filesystem rename.

Temp names carry their writer: `.NAME.sw-HOST_BOOT_PID_START_RAND.tmp` (HOST: hostname, BOOT: the
kernel boot id's first 8 hex digits, PID and START: the process id and its start time in clock
ticks since boot, RAND: 8 random hex digits). A SIGKILL runs no cleanup, so the next write to NAME
(`recover`, called by atomic_dir/atomic_path/atomic_write_*, and by the commands before they check
--out) removes the siblings whose owner is gone (a dead PID, a PID reused by a later process, or a
previous boot), and leaves those of live writers and of other hosts (a shared filesystem: we cannot
see their processes) alone. Temps named by older sizewise versions (`.NAME.XXXXXXXX.tmp`) carry no
owner and are left alone too.

`atomic_dir(force=True)` swaps the new directory with the old one in one step
(renameat2 RENAME_EXCHANGE, Linux) so the final name is never missing. Where the swap is not
available it moves the old directory aside (`.NAME.sw-….old`) and then renames the new one in; a
kill between those two renames leaves NAME missing and the old checkpoint under `.old`, and the
next `recover(NAME)` puts it back (NAME missing + an `.old` whose owner is gone -> restored).
See docs/crash-safety.md.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

from sizewise.errors import SizewiseError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temps are created with these modes (and the umask applied on top by the OS would double-apply,
# so they are set explicitly): the modes a plain open()/mkdir() would give.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.sw-(?P<host>[A-Za-z0-9-]*)_(?P<boot>[0-9a-f]*)_(?P<pid>\d+)_"
                      r"(?P<start>\d+)_(?P<rand>[0-9a-f]{8})\.(?P<kind>tmp|old)$")


# --- who owns a temp name ---

def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]


@functools.cache
def _boot_id() -> str:
    """First 8 hex digits of the kernel's boot id ('' where there is none): PIDs restart at boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks since boot (/proc/PID/stat field 22); None if unknown.
    Tells a PID that was reused by a later process from the one that wrote the temp."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after "(comm)" start at field 3
    except (ValueError, IndexError):
        return None


def _owner_token() -> str:
    """HOST_BOOT_PID_START of this process (computed per call: a fork() has a new PID)."""
    pid = os.getpid()
    return f"{_host()}_{_boot_id()}_{pid}_{_start_time(pid) or 0}"


def temp_sibling(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh, not yet existing temp name beside `final` that names this process as its owner."""
    final = Path(final)
    return final.parent / f".{final.name}.sw-{_owner_token()}_{secrets.token_hex(4)}.{kind}"


def owner_alive(host: str, boot: str, pid: int, start: int) -> bool:
    """False only when we can tell the writer is gone; a writer on another host counts as alive."""
    if host != _host():
        return True
    if boot and _boot_id() and boot != _boot_id():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if start:
        now = _start_time(pid)
        if now is not None and now != start:
            return False  # the PID belongs to a later process
    return True


def stale_siblings(final: str | os.PathLike) -> list[Path]:
    """Temp siblings of `final` (ours or older, .tmp and .old) whose writer is gone."""
    final = Path(final)
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    out = []
    for n in names:
        m = _TEMP_RE.match(n)
        if m and m["name"] == final.name and not owner_alive(m["host"], m["boot"], int(m["pid"]), int(m["start"])):
            out.append(final.parent / n)
    return out


def temp_siblings(final: str | os.PathLike) -> list[Path]:
    """Every temp sibling of `final` in the sizewise naming, live or not (for tests and reports)."""
    final = Path(final)
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    return [final.parent / n for n in names if (m := _TEMP_RE.match(n)) and m["name"] == final.name]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def recover(final: str | os.PathLike) -> dict[str, list[str]]:
    """Clean up after killed writers of `final`: if `final` is missing and a dead writer left the
    old version aside (`.old`), put it back (the newest one); then delete every dead writer's temp.
    Never touches a live writer's temps. Returns {"restored": [...], "removed": [...]}."""
    final = Path(final)
    stale = stale_siblings(final)
    restored: list[str] = []
    olds = sorted((p for p in stale if p.name.endswith(".old")), key=_mtime, reverse=True)
    if olds and not os.path.lexists(final):
        with contextlib.suppress(OSError):  # another process may restore or create it first
            os.replace(olds[0], final)
            restored.append(olds[0].name)
            _fsync_dir(final.parent)
    removed = []
    for p in stale:
        if p.name not in restored:
            _remove(p)
            removed.append(p.name)
    return {"restored": restored, "removed": removed}


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


# --- durability ---

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


def _fsync_file(path: Path) -> None:
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


def _fsync_tree(d: Path) -> None:
    """Flush every file of a finished temp directory before it gets its final name, so a power
    loss after the rename cannot leave the final name pointing at empty or short files (SIGKILL
    alone cannot: the page cache outlives the process)."""
    for root, _dirs, files in os.walk(d):
        for f in files:
            _fsync_file(Path(root) / f)
        _fsync_dir(Path(root))


# --- the swap ---

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE). False where the
    OS or filesystem cannot (the caller falls back to two renames); other errors raise."""
    if os.environ.get("SIZEWISE_NO_RENAME_EXCHANGE"):
        return False
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


# --- the writers ---

def _new_temp_file(path: Path) -> Path:
    while True:
        tmp = temp_sibling(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        return tmp


def _new_temp_dir(path: Path) -> Path:
    while True:
        tmp = temp_sibling(path)
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            continue
        os.chmod(tmp, DIR_MODE)
        return tmp


def scratch_dir(stem: str, parent: str | os.PathLike | None = None) -> Path:
    """A fresh scratch directory `.STEM.sw-….tmp` in `parent` (default: the system temp dir) that
    names this process, after removing the ones killed runs left there; the caller deletes it.
    For work directories (study's variants) that tempfile.mkdtemp would leak on a SIGKILL."""
    import tempfile

    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    recover(base / stem)
    return _new_temp_dir(base / stem)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same directory, then os.replace."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """JSON with a trailing newline; keys keep their insertion order."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside `path`; on success it is os.replace()d onto `path`.

    For writers that want a filename (safetensors.torch.save_file, GGUFWriter) rather than bytes.
    Dead writers' temps for `path` are removed first (`recover`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp_path = _new_temp_file(path)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory beside `final_dir`; on success it becomes `final_dir`.

    An existing `final_dir` is refused unless `force`; with `force` the new directory is swapped in
    (one renameat2 exchange; elsewhere: old moved aside, new renamed in) and only then is the old one
    deleted. On an exception inside the block the temp directory is removed and the old state is
    untouched; after a SIGKILL the next call's `recover` cleans up (module docstring).
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    if final.exists() and not force:
        raise SizewiseError(f"{final} already exists: choose another output path or pass --force to replace it")
    if final.exists() and not final.is_dir():
        raise SizewiseError(f"{final} exists and is not a directory: remove it or choose another output path")
    tmp = _new_temp_dir(final)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if final.exists() and exchange(tmp, final):
            old = tmp  # the swap left the old directory under the temp name
        else:
            if final.exists():
                old = temp_sibling(final, "old")
                os.replace(final, old)
            os.replace(tmp, final)
    except BaseException:
        # Put the old directory back if we moved it and the new one did not land.
        if old is not None and old != tmp and old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        _remove(old)  # a kill during this leaves a dead writer's temp: the next recover() removes it
