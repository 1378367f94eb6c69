"""Two processes recording at once both land; a writer killed (SIGKILL) mid-record leaves all or nothing."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sizewise.registry import Registry

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sizewise.registry import record_run
    reg, tag, n, n_metrics, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    d = Path(reg).parent / ("models-" + tag)
    d.mkdir(exist_ok=True)
    if mode == "die-inside":  # kill ourselves after the run row is written, before its metrics
        import os, signal
        from sizewise.registry import store
        real = store.Registry.transaction

        class Dying:
            def __init__(self, c): self.c = c
            def __getattr__(self, k): return getattr(self.c, k)
            def executemany(self, *a): os.kill(os.getpid(), signal.SIGKILL)

        from contextlib import contextmanager

        @contextmanager
        def transaction(self):
            with real(self) as c:
                yield Dying(c)
        store.Registry.transaction = transaction
    shared = d.parent / "shared.safetensors"
    for i in range(n if n > 0 else 10**9):
        own = d / f"m{i}.safetensors"
        own.write_bytes(f"{tag}-{i}".encode())
        record_run("eval", model=own, parent=shared, metrics={f"m{j}": float(j) for j in range(n_metrics)},
                   registry=reg, extra={"writer": tag, "i": i})
        if i == 0:
            print("ready", flush=True)
""")


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _writer(reg: Path, tag: str, n: int, n_metrics: int, mode: str = "normal") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(reg), tag, str(n), str(n_metrics), mode],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_whole(reg: Path) -> int:
    """The registry opens, passes SQLite's integrity check, and every run has all its metric rows."""
    c = sqlite3.connect(reg)
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    partial = c.execute("SELECT r.id, r.n_metrics, (SELECT COUNT(*) FROM metrics m WHERE m.run_id = r.id) "
                        "FROM runs r").fetchall()
    assert all(n == k for _, n, k in partial), [p for p in partial if p[1] != p[2]]
    orphans = c.execute("SELECT COUNT(*) FROM runs WHERE model_id NOT IN (SELECT id FROM models)").fetchone()[0]
    assert orphans == 0
    c.close()
    with Registry.open(reg) as r:  # and our own opener agrees
        r.list_models()
    return len(partial)


def test_parallel_writers_all_land(tmp_path):
    reg = tmp_path / "registry.sqlite"
    (tmp_path / "shared.safetensors").write_bytes(b"shared parent")
    Registry.open(reg).close()
    procs = [_writer(reg, f"w{k}", 15, 20) for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _check_whole(reg) == 45
    with Registry.open(reg) as r:
        models = r.list_models()
        assert len(models) == 46  # 45 children + the shared parent, recorded once
        shared = [m for m in models if m["name"] == "shared.safetensors"][0]
        assert len(r.list_models(parent=shared["id"])) == 45


def test_parallel_first_open_creates_once(tmp_path):
    """Several processes creating the same new registry at once: one schema, every record."""
    reg = tmp_path / "registry.sqlite"
    (tmp_path / "shared.safetensors").write_bytes(b"p")
    procs = [_writer(reg, f"w{k}", 3, 2) for k in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _check_whole(reg) == 9


def test_killed_inside_the_transaction_leaves_nothing(tmp_path):
    reg = tmp_path / "registry.sqlite"
    (tmp_path / "shared.safetensors").write_bytes(b"p")
    p = _writer(reg, "dying", 1, 5, mode="die-inside")
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert _check_whole(reg) == 0
    c = sqlite3.connect(reg)  # the model and file-hash rows of that transaction are gone too
    assert c.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 0
    assert c.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0] == 0


def test_sigkill_at_random_points_leaves_whole_records(tmp_path):
    reg = tmp_path / "registry.sqlite"
    (tmp_path / "shared.safetensors").write_bytes(b"p")
    rng = random.Random(15)
    total = 0
    for round_ in range(4):
        p = _writer(reg, f"k{round_}", 0, 400)  # records until killed
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL
        n = _check_whole(reg)
        assert n >= total + 1  # at least the run it reported before the kill
        total = n
