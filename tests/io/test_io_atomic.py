"""Atomic writes: success replaces, failure leaves the old state and no temp files behind."""
from __future__ import annotations

import json
import os

import pytest

from sizewise.errors import SizewiseError
from sizewise.io import atomic
from sizewise.io.atomic import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_write_bytes_text_json(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"b": 1, "a": [1, 2]}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["j.json", "sub", "t.txt"]


def test_write_bytes_failure_keeps_old(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    p.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_success_and_failure(tmp_path):
    p = tmp_path / "w.bin"
    with atomic_path(p) as tmp:
        assert tmp.parent == tmp_path and tmp != p
        tmp.write_bytes(b"abc")
        assert not p.exists()
    assert p.read_bytes() == b"abc"
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert p.read_bytes() == b"abc"
    assert [x.name for x in tmp_path.iterdir()] == ["w.bin"]


def test_atomic_dir_creates(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as d:
        assert d.is_dir() and d != final and not final.exists()
        (d / "x.txt").write_text("1")
    assert (final / "x.txt").read_text() == "1"
    assert [x.name for x in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_refuses_existing_without_force(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep").write_text("k")
    with pytest.raises(SizewiseError, match="--force"):
        with atomic_dir(final):
            pass
    assert (final / "keep").read_text() == "k"


def test_atomic_dir_force_replaces(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final, force=True) as d:
        (d / "new.txt").write_text("new")
        assert (final / "old.txt").exists()  # old state visible until success
    assert sorted(x.name for x in final.iterdir()) == ["new.txt"]
    assert [x.name for x in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_exception_leaves_old_intact(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final, force=True) as d:
            (d / "half.bin").write_bytes(b"x" * 100)
            raise KeyboardInterrupt
    assert sorted(x.name for x in final.iterdir()) == ["old.txt"]
    assert (final / "old.txt").read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failed_rename_restores_old(tmp_path, monkeypatch):
    """The two-rename fallback (no renameat2 exchange): a failed second rename puts the old back."""
    monkeypatch.setenv("SIZEWISE_NO_RENAME_EXCHANGE", "1")
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # 1st: old aside; 2nd: new into place -> fails
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError):
        with atomic_dir(final, force=True) as d:
            (d / "new.txt").write_text("new")
    assert sorted(x.name for x in final.iterdir()) == ["old.txt"]
    assert [x.name for x in tmp_path.iterdir()] == ["out"]


def test_modes_follow_umask_not_tempfile(tmp_path):
    """mkstemp makes 0600 files; outputs must get the mode a plain open() would give."""
    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    with atomic_path(tmp_path / "b.bin") as t:
        t.write_bytes(b"x")
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    (tmp_path / "plain_dir").mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert (tmp_path / "out").stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777


def test_atomic_dir_failed_exchange_keeps_old(tmp_path, monkeypatch):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")

    def broken(a, b):
        raise OSError("exchange failed")

    monkeypatch.setattr(atomic, "exchange", broken)
    with pytest.raises(OSError, match="exchange failed"):
        with atomic_dir(final, force=True) as d:
            (d / "new.txt").write_text("new")
    assert sorted(x.name for x in final.iterdir()) == ["old.txt"]
    assert [x.name for x in tmp_path.iterdir()] == ["out"]
