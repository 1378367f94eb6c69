"""Where a number was measured: every result JSON carries this (CPU model, cores, versions)."""
from __future__ import annotations

import os
import platform
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def proc_stat_busy() -> tuple[float, int] | None:
    """(busy CPU seconds since boot, CPU count) from /proc/stat's aggregate line; None where unreadable.
    Shared by the interleaved timing's load record and the free-core thread policy."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    agg = next((ln for ln in lines if ln.startswith("cpu ")), None)
    if agg is None:
        return None
    v = [int(x) for x in agg.split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is already inside user)
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    busy = sum(v[:8]) - idle
    cpus = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return busy / hz, max(cpus, 1)


def set_threads() -> int:
    """Protocol: torch threads = the cores other processes leave free (all of them on a quiet
    machine; evaluate/threads.py says why), or SIZEWISE_THREADS. Returns the number set."""
    import torch

    from sizewise.evaluate.threads import free_core_threads

    n = free_core_threads()
    torch.set_num_threads(n)
    return n


def machine_info() -> dict:
    import torch

    info = {"cpu": cpu_model(), "cores": cores(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import sizewise
        info["sizewise"] = getattr(sizewise, "__version__", "0.1.0")
    except ImportError:
        pass
    try:
        info["cpu_isa"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        pass
    return info


def command_line() -> str:
    """The command that produced a result, as the user typed it (argv joined)."""
    import shlex

    prog = os.path.basename(sys.argv[0]) if sys.argv else "python"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])
