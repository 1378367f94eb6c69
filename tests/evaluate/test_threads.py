"""The free-core thread policy: hysteresis, the env override, the governor resizing torch's team."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from sizewise.errors import SizewiseError
from sizewise.evaluate import threads as th


def test_taken_cores_has_hysteresis_and_never_takes_every_core():
    assert th.taken_cores(0.1, 0, 2) == 0          # background noise: keep every core
    assert th.taken_cores(0.67, 0, 2) == 1         # a competitor squeezed to 2/3 of a core still takes it
    assert th.taken_cores(0.7, 1, 2) == 1          # ... and keeps it while it stays
    assert th.taken_cores(0.2, 1, 2) == 0          # it left: give the core back
    assert th.taken_cores(3.0, 0, 2) == 1          # at least one thread for us
    assert th.taken_cores(2.5, 0, 8) == 3 and th.taken_cores(2.7, 3, 8) == 3 and th.taken_cores(2.3, 3, 8) == 2


def test_env_override_fixes_the_count_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("SIZEWISE_THREADS", "3")
    assert th.free_core_threads() == 3
    g = th.ThreadGovernor(n_cores=2)
    assert g.fixed == 3 and g.threads == 3 and g.tick() == 3 and g.changes == 0
    monkeypatch.setenv("SIZEWISE_THREADS", "zero")
    with pytest.raises(SizewiseError, match="SIZEWISE_THREADS"):
        th.free_core_threads()


def test_governor_resizes_torch_threads_on_observed_load(monkeypatch):
    monkeypatch.delenv("SIZEWISE_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        g = th.ThreadGovernor(n_cores=2, threads=2)
        assert g.observe(0.05) == 2 and g.changes == 0
        assert g.observe(0.9) == 1 and torch.get_num_threads() == 1 and g.changes == 1
        assert g.observe(0.8) == 1 and g.changes == 1
        assert g.observe(0.1) == 2 and torch.get_num_threads() == 2 and g.changes == 2
    finally:
        torch.set_num_threads(before)


def test_others_busy_cores_sees_a_real_competing_process():
    """A spinning child process shows up as about one busy core; our own spinning does not."""
    quiet = th.others_busy_cores(0.3)
    assert quiet is not None and quiet >= 0.0
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.3)
        busy = th.others_busy_cores(0.5)
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:  # our own CPU time is subtracted, never counted as others'
            pass
    finally:
        child.kill()
        child.wait()
    assert busy is not None and busy > 0.6, (quiet, busy)
    assert busy < quiet + 1.5


def test_governor_tick_samples_once_a_period(monkeypatch):
    monkeypatch.delenv("SIZEWISE_THREADS", raising=False)
    calls = []
    monkeypatch.setattr(th, "_busy_and_own", lambda: calls.append(1) or (100.0 + len(calls) * 1.0, 0.0))
    before = torch.get_num_threads()
    try:
        g = th.ThreadGovernor(n_cores=2, threads=2, period_s=1.0)
        g.tick(now=0.0)
        g.tick(now=0.5)  # inside the period: no /proc read
        assert len(calls) == 1
        assert g.tick(now=1.0) == 1  # 1 busy second per wall second by others: one core taken
        assert len(calls) == 2 and g.others == pytest.approx(1.0)
    finally:
        torch.set_num_threads(before)
