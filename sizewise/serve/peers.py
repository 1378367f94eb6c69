"""Peer servers for `bench-serve --peer`: how to start vLLM and llama.cpp on the same weights, and stop them.

A peer is described by a `PeerSpec`: a name, a `probe` that says why it cannot run here (None if it can),
and a `launch` that turns prepared weights into a command line. `PeerProcess` runs any such command in
its own process group (vLLM forks an engine-core process, llama.cpp's server may spawn helpers) so that
stopping it (SIGTERM, then SIGKILL after a grace period) leaves nothing behind, also when bench-serve
itself is interrupted. Readiness is GET /v1/models answering 200, which all three servers implement.

Why subprocesses for sizewise's own server too: every server is then measured the same way, by the same
client in the bench-serve process, none of them sharing that process's GIL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sizewise.errors import SizewiseError

DEFAULT_VLLM_PYTHON = Path(".venv-vllm/bin/python")  # `make .venv-vllm/.installed`
DEFAULT_LLAMACPP_PYTHON = Path(".venv-llamacpp/bin/python")  # `make .venv-llamacpp/.installed`
LLAMACPP_SERVER_MODULES = ("llama_cpp.server.app",)  # imports sse_starlette, starlette_context, pydantic_settings


class PeerUnavailable(Exception):
    """This peer cannot run here (not installed, weights not convertible, exited at start): skip it."""


@dataclass
class Launch:
    """What to run: argv, extra environment, and what the row in the table says about it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    weights: str = ""  # the file or directory it serves
    dtype: str = ""
    version: str = ""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    probe: Callable[["PeerContext"], str | None]  # why it cannot run, or None
    launch: Callable[["PeerContext", int], Launch]  # (context, port) -> Launch; may raise PeerUnavailable


@dataclass
class PeerContext:
    """Everything a peer needs to start: the model spec, where to put converted weights, the interpreters."""

    model: str
    served_name: str
    workdir: Path
    threads: int
    max_model_len: int = 2048
    vllm_python: str | None = None
    llamacpp_python: str | None = None
    sizewise_args: list[str] = field(default_factory=list)  # extra `sizewise serve` options (dtype, kv, batch)
    log: Callable[[str], None] = print


# --- probing interpreters -------------------------------------------------------------------------

def _python_check(python: str, code: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Run `python -c code`; (ok, last line of its output)."""
    if not Path(python).exists():
        return False, f"{python} does not exist"
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python} failed to run ({e.__class__.__name__})"
    text = (p.stdout if p.returncode == 0 else p.stderr).strip().splitlines()
    return p.returncode == 0, (text[-1] if text else f"exit status {p.returncode}")


def _vllm_python(ctx: PeerContext) -> str:
    return ctx.vllm_python or str(DEFAULT_VLLM_PYTHON)


def _llamacpp_python(ctx: PeerContext) -> str:
    """--llamacpp-python, else .venv-llamacpp if it exists, else this interpreter (llama-cpp-python is a sizewise extra)."""
    if ctx.llamacpp_python:
        return ctx.llamacpp_python
    return str(DEFAULT_LLAMACPP_PYTHON) if DEFAULT_LLAMACPP_PYTHON.exists() else sys.executable


def probe_vllm(ctx: PeerContext) -> str | None:
    py = _vllm_python(ctx)
    ok, msg = _python_check(py, "import importlib.util as u, sys; sys.exit(0 if u.find_spec('vllm') else 3)")
    if not ok:
        return f"no vLLM at {py} ({msg}): `make .venv-vllm/.installed` builds it, or pass --vllm-python"
    return None


def probe_llamacpp(ctx: PeerContext) -> str | None:
    py = _llamacpp_python(ctx)
    ok, msg = _python_check(py, "import " + ", ".join(LLAMACPP_SERVER_MODULES))
    if not ok:
        return (f"llama_cpp.server is not importable with {py} ({msg}): it needs "
                "`pip install 'llama-cpp-python[server]'` (`make .venv-llamacpp/.installed`), or pass --llamacpp-python")
    return None


def _version(python: str, dists: tuple[str, ...]) -> str:
    code = ("import importlib.metadata as m\nfor d in %r:\n    try:\n        print(d, m.version(d)); break\n"
            "    except m.PackageNotFoundError: pass") % (dists,)
    ok, msg = _python_check(python, code)
    return msg if ok else ""


# --- weights in each engine's format --------------------------------------------------------------

def gguf_weights(ctx: PeerContext) -> Path:
    """The GGUF llama.cpp serves: MODEL itself if it is one (bundled: the shipped file), else `sizewise export --to gguf`."""
    from sizewise.export import common

    path, kind = common.source_kind(ctx.model)
    if kind == "gguf":
        return path
    out = ctx.workdir / "model.gguf"
    if not out.is_file():
        from sizewise.export import gguf

        ctx.log(f"exporting {ctx.model} to GGUF for llama.cpp ({out})")
        gguf.export(ctx.model, out, type_=None, allow_requantize=False, force=True, measure_tokens=0)
    return out


def hf_weights(ctx: PeerContext) -> Path:
    """The HF directory vLLM serves: MODEL itself if it is a plain HF directory, else `sizewise export --to vllm`
    (bundled: the GGUF dequantized, the values sizewise serves)."""
    from sizewise.export import common

    path, kind = common.source_kind(ctx.model)
    if kind == "hf":
        return path
    out = ctx.workdir / "vllm"
    if not (out / "config.json").is_file():
        from sizewise.export import compressed_tensors

        ctx.log(f"exporting {ctx.model} for vLLM ({out})")
        compressed_tensors.export(ctx.model, out, type_=None, allow_requantize=False, force=True, measure_tokens=0)
    return out


def _weights(fn: Callable[[PeerContext], Path], ctx: PeerContext) -> Path:
    try:
        return fn(ctx)
    except SizewiseError as e:
        raise PeerUnavailable(f"its weights could not be written: {e}") from None
    except Exception as e:  # noqa: BLE001 - transformers/gguf raise many types; the other servers still run
        first = (str(e).splitlines() or [""])[0][:160]
        raise PeerUnavailable(f"its weights could not be written ({e.__class__.__name__}: {first})") from None


# --- launch commands ------------------------------------------------------------------------------

def launch_sizewise(ctx: PeerContext, port: int) -> Launch:
    argv = [sys.executable, "-m", "sizewise.cli", "serve", ctx.model, "--host", "127.0.0.1", "--port", str(port),
            "--name", ctx.served_name, *ctx.sizewise_args]
    import sizewise

    dtype = ctx.sizewise_args[ctx.sizewise_args.index("--dtype") + 1] if "--dtype" in ctx.sizewise_args else "fp32"
    root = str(Path(sizewise.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    return Launch(argv, env, weights=ctx.model, dtype=dtype, version=f"sizewise {getattr(sizewise, '__version__', '')}".strip())


def launch_vllm(ctx: PeerContext, port: int) -> Launch:
    py = _vllm_python(ctx)
    d = _weights(hf_weights, ctx)
    argv = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(d), "--dtype", "bfloat16",
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", ctx.served_name,
            "--max-model-len", str(ctx.max_model_len), "--seed", "0", "--disable-uvicorn-access-log"]
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"), "TOKENIZERS_PARALLELISM": "false"}
    return Launch(argv, env, weights=str(d), dtype="bf16", version=_version(py, ("vllm-cpu", "vllm")))


def launch_llamacpp(ctx: PeerContext, port: int) -> Launch:
    py = _llamacpp_python(ctx)
    g = _weights(gguf_weights, ctx)
    argv = [py, "-m", "llama_cpp.server", "--model", str(g), "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(ctx.threads), "--n_threads_batch", str(ctx.threads), "--n_ctx", str(ctx.max_model_len),
            "--interrupt_requests", "False", "--model_alias", ctx.served_name]
    return Launch(argv, {}, weights=str(g), dtype=_gguf_type(g), version=_version(py, ("llama_cpp_python", "llama-cpp-python")))


def _gguf_type(path: Path) -> str:
    """'GGUF Q4_1' etc. from the file name when it says (the bundled one does), else 'GGUF'."""
    import re

    m = re.search(r"\.(Q\d_\w+|Q\d_\d|F16|F32|BF16)\.gguf$", path.name, re.IGNORECASE)
    return f"GGUF {m.group(1).upper()}" if m else "GGUF"


SIZEWISE = PeerSpec("sizewise", lambda ctx: None, launch_sizewise)
PEERS: dict[str, PeerSpec] = {"vllm": PeerSpec("vllm", probe_vllm, launch_vllm),
                              "llamacpp": PeerSpec("llamacpp", probe_llamacpp, launch_llamacpp)}


def parse_peers(text: str | None, known: dict[str, PeerSpec] = PEERS) -> list[PeerSpec]:
    """'vllm,llamacpp' -> specs, in the order given; an unknown name is one SizewiseError naming the valid ones."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise SizewiseError(f"unknown --peer {', '.join(map(repr, bad))}: valid peers are {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


# --- running one ----------------------------------------------------------------------------------

class PeerProcess:
    """A server subprocess in its own process group, with its output in a log file."""

    def __init__(self, name: str, launch: Launch, port: int, log_path: Path):
        self.name, self.launch, self.port, self.log_path = name, launch, port, log_path
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> "PeerProcess":
        """Start and wait until /v1/models answers; PeerUnavailable (after stopping it) if it exits or times out."""
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(self.launch.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env={**os.environ, **self.launch.env}, start_new_session=True)
            except OSError as e:
                raise PeerUnavailable(f"could not start {self.launch.argv[0]} ({e.__class__.__name__}: {e})") from None
        try:
            while True:
                if self.proc.poll() is not None:
                    raise PeerUnavailable(f"exited with status {self.proc.returncode} before it answered"
                                          f"{self._last_line()} (log: {self.log_path})")
                if self._ready():
                    self.startup_s = time.monotonic() - t0
                    return self
                if time.monotonic() - t0 > timeout:
                    raise PeerUnavailable(f"did not answer within {timeout:.0f} s{self._last_line()} (log: {self.log_path})")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _last_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()[:200]}" if lines else ""

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after grace_s; reaps the leader."""
        p = self.proc
        if p is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(p):
                time.sleep(0.1)
            if not _group_alive(p):
                break
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "PeerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(p: subprocess.Popen) -> bool:
    """Any process of p's group still running (zombies do not count: only their parent can reap them)."""
    p.poll()  # reap the leader if it has exited
    for pid in group_pids(p.pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def group_pids(pgid: int) -> list[int]:
    """Pids whose process group is pgid (from /proc: Linux, like the rest of the serving code)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def workdir(base: str | None) -> tempfile.TemporaryDirectory | None:
    """A temporary directory for converted weights and logs unless the user gave one (kept, reused)."""
    return None if base else tempfile.TemporaryDirectory(prefix="sizewise-peers-")
