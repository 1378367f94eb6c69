"""sizewise's own CPU GEMMs (cpu_kernels.cpp), compiled once per machine and cached on disk.

Why our own: profiled at batch 1 (eager int4-g64 decode of the bundled model, 14.7 ms per token), 4.5 ms
went to 210 calls of aten's int4 kernel and 4.0 ms to the bf16 head, a GEMV that torch runs without the
CPU's bf16 dot-product instruction. The kernels here: int4 group-wise weights (w = (q - 8) * scale + zero,
the layout `pack_q4` writes) and bf16 weights against bf16 activations with fp32 sums (AVX512-BF16
vdpbf16ps), fp32 and int8-row weights against fp32 activations. Same activations and weights as the aten
paths they replace, so the results agree to fp32 rounding; outputs are fp32 (no bf16 rounding).

Build: `torch.utils.cpp_extension.load` (g++ and ninja, AVX-512F/BW/VL/DQ/BF16; OpenMP through torch's own
libgomp, so the kernels share torch's thread team and `torch.set_num_threads`). The build directory is
keyed by torch version, source hash and compiler flags, under `$SIZEWISE_CACHE` (default
`~/.cache/sizewise`): the first process compiles (~30 s, in a child process, under an flock that dies
with its holder), later ones import the finished library directly, without ninja or torch's loader lock
(`load_seconds()`); a build from another torch or another source is never reused, and one that is
unfinished or fails to import is deleted and rebuilt. Where the CPU lacks AVX-512 BF16, no compiler is found, or
`SIZEWISE_KERNELS=0` is set, `ops()` returns None and every caller keeps its PyTorch path (the tests run
both).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

Q4, BF16, F32, I8 = 0, 1, 2, 3
SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-ffp-contract=off", "-fopenmp"]
_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    """False when SIZEWISE_KERNELS=0 (the pure-PyTorch paths, e.g. a benchmark's baseline)."""
    return os.environ.get("SIZEWISE_KERNELS", "1").strip() not in ("0", "false", "no", "off")


def cpu_ok() -> str | None:
    """Why this CPU cannot run the kernels, or None."""
    if sys.platform != "linux":
        return "the kernels are built for Linux only"
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "cannot read /proc/cpuinfo"
    missing = [f for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma") if f not in flags]
    return f"CPU lacks {', '.join(missing)}" if missing else None


def cache_root() -> Path:
    return Path(os.environ.get("SIZEWISE_CACHE") or Path.home() / ".cache" / "sizewise")


def build_key() -> str:
    """torch version + source + flags: a build from any other combination is another directory."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    h.update(torch.__version__.encode())
    return f"torch-{torch.__version__.replace('+', '_')}-{h.hexdigest()[:16]}"


MODULE = "sizewise_cpu_kernels"
DONE = "built.ok"  # written after a build imported cleanly: a library without it is never trusted


def _load(build_dir: Path):
    """Compile (torch's JIT loader, ninja) into `build_dir` and import. Only ever run by `_build`, in a child
    process under the cache's lock: the loader takes a lock file of its own that a killed process leaves
    behind, and every later load would wait on it forever."""
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(name=MODULE, sources=[str(SOURCE)], extra_cflags=CFLAGS,
                              extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)


def _import_built(build_dir: Path):
    """The cached library imported directly (no ninja, no lock), or None when there is no finished build.
    Raises ImportError when a library marked finished does not import (corrupt, another machine's)."""
    import importlib.util

    so = build_dir / f"{MODULE}.so"
    if not (so.is_file() and (build_dir / DONE).is_file()):
        return None
    spec = importlib.util.spec_from_file_location(MODULE, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _FileLock:
    """An exclusive flock on a file: released by the kernel when its holder dies, so a build killed half-way
    never blocks the next one."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _build(build_dir: Path) -> None:
    """Compile into `build_dir` in a child interpreter (torch's JIT loader also skips a build it saw earlier
    in the same process), then mark it finished. Caller holds the cache lock."""
    import subprocess

    shutil.rmtree(build_dir, ignore_errors=True)  # whatever is there is unfinished or untrusted
    code = "import sys; from pathlib import Path; from sizewise import kernels; kernels._load(Path(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(build_dir)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError((out.stderr.strip().splitlines() or ["build failed"])[-1])
    (build_dir / DONE).write_text(f"{torch.__version__}\n")


def ops():
    """The compiled module, or None where it cannot be had (the reason is in `why_not()`)."""
    if not enabled():
        return None
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        if "mod" in _state:
            return _state["mod"]
        mod, why = None, cpu_ok()
        t0 = time.perf_counter()
        cached = False
        if why is None:
            build_dir = cache_root() / "kernels" / build_key()
            try:
                try:
                    mod = _import_built(build_dir)
                except ImportError:
                    mod = None
                cached = mod is not None
                if mod is None:
                    with _FileLock(build_dir.parent / f"{build_dir.name}.lock"):
                        try:  # another process may have finished the build while we waited
                            mod = _import_built(build_dir)
                        except ImportError:
                            mod = None
                        if mod is None:
                            _build(build_dir)
                            mod = _import_built(build_dir)
            except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch paths remain
                last = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
                why = f"could not build the CPU kernels ({type(e).__name__}: {last})"
                mod = None
        _state["cached"] = cached
        _state["seconds"] = time.perf_counter() - t0
        _state["why"] = why
        _state["mod"] = mod
        return mod


KERNEL_ROWS = 64  # heads take the kernels for up to this many rows (decode batches); longer inputs keep torch's


def for_rows(x: torch.Tensor):
    """The kernels module when `x` [..., K] is a decode-sized batch the kernels take (K a multiple of 32,
    at most KERNEL_ROWS rows), else None: the one gate the lm heads share."""
    mod = ops()
    if mod is None or x.shape[-1] % 32 or x.numel() // max(x.shape[-1], 1) > KERNEL_ROWS:
        return None
    return mod


def loaded():
    """The module `ops()` loaded (for callers that chose the kernel path when it was available)."""
    return _state["mod"]


def why_not() -> str | None:
    """After `ops()`: why the kernels are not in use (None when they are)."""
    if not enabled():
        return "SIZEWISE_KERNELS=0"
    ops()
    return _state.get("why")


def load_seconds() -> tuple[float, bool] | None:
    """(seconds `ops()` took, whether the build came from the disk cache), once it has run."""
    if "seconds" not in _state:
        return None
    return _state["seconds"], bool(_state.get("cached"))


def _pair_panels(t: torch.Tensor) -> torch.Tensor:
    """[P, U, X] per-panel streams -> panels in pairs, interleaved unit by unit ([P/2, U, 2, X]); a last odd
    panel stays alone at the end. The kernel then reads each pair as one sequential stream."""
    p = t.shape[0] - t.shape[0] % 2
    pairs = t[:p].reshape(p // 2, 2, *t.shape[1:]).transpose(1, 2).reshape(p, *t.shape[1:])
    return torch.cat([pairs, t[p:]]) if p < t.shape[0] else pairs


def _unpair_panels(t: torch.Tensor) -> torch.Tensor:
    """Inverse of _pair_panels."""
    p = t.shape[0] - t.shape[0] % 2
    u = t[:p].reshape(p // 2, t.shape[1], 2, *t.shape[2:]).transpose(1, 2).reshape(p, *t.shape[1:])
    return torch.cat([u, t[p:]]) if p < t.shape[0] else u


def pack_q4(q: torch.Tensor) -> torch.Tensor:
    """int codes [N, K] in 0..15 -> the kernel's layout, uint8 [N, K/2] in storage order: column panels of 16
    rows; per panel and 4 inputs, 32 bytes where byte j holds the code of row j/2 at input j%2 (low nibble)
    and at input 2 + j%2 (high nibble), so one widening and two vpermw give two vectors in vdpbf16ps's pair
    layout (16 rows x 2 inputs). Panels are stored in pairs interleaved 32 bytes at a time (one sequential
    stream per pair); a last odd panel alone."""
    n, k = q.shape
    if k % 32 or n % 16:
        raise ValueError(f"int4 kernel layout needs rows in panels of 16 and a multiple-of-32 input dim (got {n} x {k})")
    c = q.to(torch.uint8).reshape(n // 16, 16, k // 4, 2, 2)  # [panel, row, quad, pair, input in pair]
    c = c.permute(0, 2, 3, 1, 4).reshape(n // 16, k // 4, 2, 32)  # [panel, quad, pair, 32]
    return _pair_panels(c[:, :, 0] | (c[:, :, 1] << 4)).reshape(n, k // 2)


def unpack_q4(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack_q4 -> int32 [N, K]."""
    n = p.shape[0]
    b = _unpair_panels(p.reshape(n // 16, k // 4, 32)).to(torch.int32)
    c = torch.stack([b & 0xF, b >> 4], dim=2)  # [panel, quad, pair, 32]
    return c.reshape(n // 16, k // 4, 2, 16, 2).permute(0, 3, 1, 2, 4).reshape(n, k)


def rows_scales(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """bf16 [N, G] scale and float zero (w = (q - 8) * scale + zero) -> the kernel's layout, bf16 [N, G, 2]
    holding, per panel of 16 rows and group, 16 scales then 16 zeros ([N/16, G, 2, 16]), panels paired group
    by group as pack_q4 pairs them."""
    n, g = scale.shape
    sz = torch.stack([scale.to(torch.bfloat16), zero.to(torch.bfloat16)], dim=-1)  # [N, G, 2]
    sz = sz.reshape(n // 16, 16, g, 2).permute(0, 2, 3, 1).reshape(n // 16, g, 32)
    return _pair_panels(sz).contiguous().reshape(n, g, 2)
