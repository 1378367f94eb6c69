"""SIGKILL at each step of atomic_dir / atomic_path (a child kills itself there), then the next run.

The random-delay test (test_crash_kill.py) rarely lands in a window of a few microseconds; this one
lands in each on purpose. After the kill the final name holds the old or the new version, whole
(except in the two-rename fallback's window, where it is missing and `recover` puts the old back);
the next run's recover leaves no temp siblings.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sizewise.io.atomic import atomic_dir, recover, temp_siblings

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
from sizewise.io import atomic

point, final = sys.argv[1], Path(sys.argv[2])
die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
written = False
if point == "before_swap":
    atomic.exchange = die
elif point == "after_swap":
    real_exchange = atomic.exchange
    atomic.exchange = lambda a, b: (real_exchange(a, b), die())
elif point in ("window", "fallback_after_rename"):
    real_replace = os.replace
    def replace(src, dst):
        if point == "window" and Path(dst) == final:
            die()  # the old directory is aside, the new one not yet in
        real_replace(src, dst)
        if point == "fallback_after_rename" and Path(dst) == final:
            die()
    os.replace = replace
elif point == "removing_old":
    def remove(p):
        if written:
            files = sorted(p.iterdir())
            files[0].unlink()  # part of the old directory is gone
            die()
    atomic._remove = remove
with atomic.atomic_dir(final, force=True) as d:
    (d / "a.bin").write_bytes(b"new" * 1000)
    if point == "in_block":
        (d / "b.bin").write_bytes(b"ne")  # half of the second file
        die()
    (d / "b.bin").write_bytes(b"new" * 1000)
    written = True
die()  # not reached for the points above
"""


def _kill_at(point: str, final: Path, no_exchange: bool = False) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if no_exchange:
        env["SIZEWISE_NO_RENAME_EXCHANGE"] = "1"
    return subprocess.run([sys.executable, "-c", CHILD, point, str(final)], env=env, timeout=60).returncode


def _old(final: Path) -> None:
    final.mkdir()
    (final / "a.bin").write_bytes(b"old" * 1000)
    (final / "b.bin").write_bytes(b"old" * 1000)


def _state(final: Path) -> str:
    if not final.exists():
        return "missing"
    files = {p.name: p.read_bytes() for p in final.iterdir()}
    for v in ("old", "new"):
        if files == {"a.bin": v.encode() * 1000, "b.bin": v.encode() * 1000}:
            return v
    return f"mixed: {sorted(files)}"


@pytest.mark.parametrize("point, no_exchange, after_kill, after_recover", [
    ("in_block", False, "old", "old"),
    ("before_swap", False, "old", "old"),
    ("after_swap", False, "new", "new"),
    ("removing_old", False, "new", "new"),
    ("in_block", True, "old", "old"),
    ("window", True, "missing", "old"),  # the fallback's one gap: recover puts the old one back
    ("fallback_after_rename", True, "new", "new"),
    ("removing_old", True, "new", "new"),
])
def test_kill_at_each_step(tmp_path, point, no_exchange, after_kill, after_recover):
    final = tmp_path / "out"
    _old(final)
    assert _kill_at(point, final, no_exchange) == -9
    assert _state(final) == after_kill
    assert temp_siblings(final), "a SIGKILL runs no cleanup: something must be left to recover"
    recover(final)
    assert _state(final) == after_recover
    assert temp_siblings(final) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(final, force=True) as d:  # and the next run simply works
        (d / "a.bin").write_bytes(b"new" * 1000)
        (d / "b.bin").write_bytes(b"new" * 1000)
    assert _state(final) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_kill_while_writing_a_file(tmp_path):
    final = tmp_path / "w.json"
    final.write_text('{"old": true}\n')
    child = ("import os, signal, sys\nfrom sizewise.io.atomic import atomic_path\n"
             "with atomic_path(sys.argv[1]) as t:\n"
             "    open(t, 'w').write('{\"new\": tr')\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", child, str(final)], env=env, timeout=60).returncode == -9
    assert final.read_text() == '{"old": true}\n' and len(temp_siblings(final)) == 1
    recover(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json"]
