"""Stale temp cleanup: a killed writer's temps are removed by the next write, a live writer's never."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from sizewise.io import atomic
from sizewise.io.atomic import atomic_dir, atomic_path, atomic_write_text, recover, scratch_dir, temp_siblings


def _name(final, pid: int, start: int, kind: str = "tmp", host: str | None = None, boot: str | None = None,
          rand: str = "0123abcd"):
    host = atomic._host() if host is None else host
    boot = atomic._boot_id() if boot is None else boot
    return final.parent / f".{final.name}.sw-{host}_{boot}_{pid}_{start}_{rand}.{kind}"


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _dir(p, content: str = "x"):
    p.mkdir()
    (p / "f").write_text(content)
    return p


def test_temp_names_carry_this_process_and_parse(tmp_path):
    t = atomic.temp_sibling(tmp_path / "out")
    m = atomic._TEMP_RE.match(t.name)
    assert m and m["name"] == "out" and int(m["pid"]) == os.getpid() and m["kind"] == "tmp"
    assert int(m["start"]) == atomic._start_time(os.getpid())
    # a target name with dots and dashes still parses back to itself
    t = atomic.temp_sibling(tmp_path / "model-v1.2.gguf", "old")
    assert atomic._TEMP_RE.match(t.name)["name"] == "model-v1.2.gguf"


def test_live_owner_survives_dead_owner_is_removed(tmp_path):
    final = tmp_path / "out"
    mine = _dir(_name(final, os.getpid(), atomic._start_time(os.getpid())))
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(100):  # /proc/PID/stat exists once the child is forked
            if atomic._start_time(sleeper.pid) is not None:
                break
            time.sleep(0.01)
        other_live = _dir(_name(final, sleeper.pid, atomic._start_time(sleeper.pid), rand="11111111"))
        dead = _dir(_name(final, _dead_pid(), 12345, rand="22222222"))
        dead_file = _name(final, _dead_pid(), 12345, rand="33333333")
        dead_file.write_bytes(b"half a shard")
        res = recover(final)
        assert sorted(res["removed"]) == sorted([dead.name, dead_file.name]) and res["restored"] == []
        assert mine.is_dir() and other_live.is_dir()
        assert not dead.exists() and not dead_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same temp, now that its owner is gone
    recover(final)
    assert not other_live.exists() and mine.is_dir()


def test_reused_pid_and_previous_boot_count_as_dead(tmp_path):
    final = tmp_path / "out"
    me, start = os.getpid(), atomic._start_time(os.getpid())
    reused = _dir(_name(final, me, start + 1))  # our PID, but a different start time: an earlier owner
    old_boot = _dir(_name(final, me, start, boot="deadbeef" if atomic._boot_id() != "deadbeef" else "feedf00d",
                          rand="44444444"))
    recover(final)
    assert not reused.exists() and not old_boot.exists()


def test_unrelated_and_foreign_entries_untouched(tmp_path):
    final = tmp_path / "out"
    dead = _dead_pid()
    keep = [
        _dir(tmp_path / ".out.k3j4h5g6.tmp"),  # an older sizewise's mkstemp name: no owner to check
        _dir(_name(final, dead, 1, host="some-other-host")),  # another host's writer: cannot tell
        _dir(_name(tmp_path / "out2", dead, 1)),  # a dead writer of another target
        _dir(tmp_path / "out2"),
        _dir(tmp_path / ".out.sw-notatoken.tmp"),
    ]
    (tmp_path / "out.tmp").write_text("a user's file")
    keep.append(tmp_path / "out.tmp")
    assert recover(final) == {"restored": [], "removed": []}
    assert all(p.exists() for p in keep)


def test_missing_final_gets_the_dead_writers_old_back(tmp_path):
    """A kill between 'old moved aside' and 'new renamed in' (the two-rename fallback)."""
    final = tmp_path / "out"
    old = _dir(_name(final, _dead_pid(), 7, kind="old"), "old checkpoint")
    new = _dir(_name(final, _dead_pid(), 7, rand="55555555"), "new, maybe complete")
    res = recover(final)
    assert res["restored"] == [old.name] and res["removed"] == [new.name]
    assert (final / "f").read_text() == "old checkpoint"
    assert temp_siblings(final) == []


def test_old_is_not_restored_over_an_existing_final(tmp_path):
    final = _dir(tmp_path / "out", "current")
    old = _dir(_name(final, _dead_pid(), 7, kind="old"), "older")
    assert recover(final) == {"restored": [], "removed": [old.name]}
    assert (final / "f").read_text() == "current"


def test_newest_of_several_olds_is_restored(tmp_path):
    final = tmp_path / "out"
    a = _dir(_name(final, _dead_pid(), 7, kind="old", rand="aaaaaaaa"), "older")
    b = _dir(_name(final, _dead_pid(), 7, kind="old", rand="bbbbbbbb"), "newer")
    os.utime(a, (1_000_000, 1_000_000))
    recover(final)
    assert (final / "f").read_text() == "newer" and temp_siblings(final) == []


def test_live_writers_old_is_left_alone_even_if_final_is_missing(tmp_path):
    """A live writer in its two-rename window: its .old is its business, not ours."""
    final = tmp_path / "out"
    mine = _dir(_name(final, os.getpid(), atomic._start_time(os.getpid()), kind="old"))
    assert recover(final) == {"restored": [], "removed": []}
    assert mine.is_dir() and not final.exists()


@pytest.mark.parametrize("writer", ["dir", "path", "text"])
def test_every_writer_cleans_before_it_writes(tmp_path, writer):
    final = tmp_path / "out"
    _dir(_name(final, _dead_pid(), 9))
    _name(final, _dead_pid(), 9, rand="66666666").write_bytes(b"x")
    if writer == "dir":
        with atomic_dir(final) as d:
            (d / "a").write_text("1")
    elif writer == "path":
        with atomic_path(final) as t:
            t.write_text("1")
    else:
        atomic_write_text(final, "1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_refusal_comes_after_restoring(tmp_path):
    """NAME missing, its old version aside: the next run without --force is refused (NAME is back)."""
    from sizewise.errors import SizewiseError

    final = tmp_path / "out"
    _dir(_name(final, _dead_pid(), 7, kind="old"), "old")
    with pytest.raises(SizewiseError, match="already exists"):
        with atomic_dir(final):
            pass
    assert (final / "f").read_text() == "old" and temp_siblings(final) == []


def test_scratch_dir_removes_killed_runs_scratch(tmp_path):
    dead = _dir(_name(tmp_path / "sizewise-study", _dead_pid(), 3))
    s = scratch_dir("sizewise-study", tmp_path)
    assert s.is_dir() and s.parent == tmp_path and not dead.exists()
    assert atomic._TEMP_RE.match(s.name)["pid"] == str(os.getpid())
