"""SIGKILL harness: run a sizewise command, kill it after a random delay, judge what it left behind.

Used by tests/io/test_crash_kill.py (a short run) and benchmarks/bench_crash_kill.py (a long one).

Two ways to run the command:
- `ForkRunner` (default): a helper process imports torch, transformers and sizewise once, then
  forks one child per run; the child runs `sizewise.cli.app` with the command's arguments, exactly
  what `python -m sizewise.cli ...` runs after its imports, and the parent SIGKILLs it. This spends
  the time budget on the part of a run that writes files rather than on 3-5 s of imports per kill.
- `ExecRunner`: a fresh `python -m sizewise.cli ...` per run (the literal command; the delay then
  covers the import time too).

After each kill the output is judged (`judge`): "absent", "complete-new" (a complete output from a
run, not the one that was there before), "complete-old" (the output that was there before the run,
untouched: it carries a marker file the harness put in), or "half-written" (anything else under the
final name). The input tree is hashed before and after every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
OLD_MARKER = "crash-harness-old-marker"  # written into an existing output before a run; the new one lacks it


# ------------------------------------------------------------------ the model and its input tree

def byte_tokenizer():
    """A real PreTrainedTokenizerFast: GPT-2-style byte-level BPE (4 specials, 256 bytes, 4 merges: 264 ids),
    the kind every export target maps (GGUF's gpt2 vocabulary, ONNX's tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [("h", "e"), ("\u0120", "t"), ("i", "n"), ("e", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def make_model_dir(d: Path, hidden: int = 256, inter: int = 768, layers: int = 4, seed: int = 7,
                   shard: str = "1MB") -> Path:
    """A bf16 llama HF directory (sharded, with tokenizer): hidden 256 / 4 layers is ~3.2 M params, 6.4 MB."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=264, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d, max_shard_size=shard)
    byte_tokenizer().save_pretrained(d)
    return d


def tree_hash(d: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under d (the input must not change)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def siblings(out: Path) -> list[str]:
    """Every name beside `out` that starts with `.OUTNAME.`: temps of any naming, ours or legacy."""
    if not out.parent.is_dir():
        return []
    return sorted(n for n in os.listdir(out.parent) if n.startswith(f".{out.name}."))


# ------------------------------------------------------------------ is the output complete?

def check_sizewise_dir(out: Path) -> str | None:
    """None if `out` is a complete sizewise checkpoint (manifest, every listed file, loads); else why not."""
    from sizewise.compression.checkpoint import read_manifest
    try:
        man = read_manifest(out)
        missing = [f for f in man.get("files", []) if not (out / f).is_file()]
        if missing or not man.get("files"):
            return f"manifest lists missing files {missing[:2]}"
        import sizewise
        sizewise.load(out)
    except Exception as e:  # noqa: BLE001 - any failure is "not complete"
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None


def check_gguf_file(out: Path) -> str | None:
    """A GGUF the gguf reader opens with every tensor's data inside the file."""
    try:
        import gguf
        r = gguf.GGUFReader(str(out))
        size = out.stat().st_size
        if not r.tensors:
            return "no tensors"
        for t in r.tensors:
            if int(t.data_offset) + int(t.n_bytes) > size:
                return f"tensor {t.name} runs past the end of the file"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:160]}"
    return None


def check_safetensors_dir(out: Path) -> str | None:
    """An HF/compressed-tensors directory: config.json parses, every safetensors file (and the index's) loads."""
    try:
        from safetensors import safe_open
        json.loads((out / "config.json").read_text())
        files = sorted(out.glob("*.safetensors"))
        index = out / "model.safetensors.index.json"
        if index.is_file():
            want = set(json.loads(index.read_text())["weight_map"].values())
            if not want <= {f.name for f in files}:
                return f"index names missing shards {sorted(want - {f.name for f in files})[:2]}"
        if not files:
            return "no safetensors files"
        for f in files:
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    st.get_tensor(k)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:160]}"
    return None


def check_onnx_dir(out: Path) -> str | None:
    """Every .onnx model in the directory loads (with external data) and passes onnx.checker."""
    try:
        import onnx
        models = sorted(out.glob("*.onnx")) if out.is_dir() else [out]
        if not models:
            return "no .onnx file"
        for m in models:
            onnx.checker.check_model(str(m))
            onnx.load(str(m))
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:160]}"
    return None


@dataclass
class Command:
    """One row of the table: `sizewise ARGS` writing to {out}; `check` says whether an output is complete."""
    name: str
    args: list[str]  # {src} and {out} are filled in
    check: Callable[[Path], str | None] = check_sizewise_dir
    out_name: str = "out"
    needs_module: str | None = None  # skip the row (with this reason) if the module does not import
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, src: Path, out: Path) -> list[str]:
        return [a.format(src=src, out=out) for a in self.args]


def commands() -> list[Command]:
    """The commands that write a checkpoint. Every run passes --force: when an output exists from an
    earlier run it is the replace path (the old one must survive until the new one is complete)."""
    return [
        Command("compress-stream", ["compress", "{src}", "--recipe", "int4-g64", "--out", "{out}", "--force", "--json"]),
        Command("compress-memory", ["compress", "{src}", "--recipe", "int8-wo", "--no-stream", "--out", "{out}",
                                    "--force", "--json"]),
        Command("prune", ["compress", "{src}", "--prune", "magnitude", "--sparsity", "0.5", "--out", "{out}",
                          "--force", "--json"]),
        Command("share", ["share", "{src}", "--out", "{out}", "--eval-tokens", "0", "--force", "--json"]),
        Command("export-gguf", ["export", "{src}", "--to", "gguf", "--out", "{out}", "--measure-tokens", "0",
                                "--force", "--json"], check=check_gguf_file, out_name="out.gguf",
                needs_module="sizewise.export.gguf"),
        Command("export-vllm", ["export", "{src}", "--to", "vllm", "--out", "{out}", "--measure-tokens", "0",
                                "--force", "--json"], check=check_safetensors_dir,
                needs_module="sizewise.export.compressed_tensors"),
        Command("export-onnx", ["export", "{src}", "--to", "onnx", "--out", "{out}", "--measure-tokens", "0",
                                "--force", "--json"], check=check_onnx_dir, needs_module="sizewise.export.onnx"),
    ]


def unavailable(cmd: Command) -> str | None:
    """Why a row cannot run here (its module is not importable yet), or None."""
    if cmd.needs_module is None:
        return None
    import importlib.util
    try:
        if importlib.util.find_spec(cmd.needs_module) is None:
            return f"{cmd.needs_module} is not importable (not written yet)"
    except ImportError as e:
        return f"{cmd.needs_module} is not importable ({e})"
    return None


# ------------------------------------------------------------------ running and killing

def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("SIZEWISE_STREAM_SHARD_BYTES", str(256 * 1024))  # many output shards from a small model
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra or {})
    return env


@dataclass
class RunResult:
    rc: int | None  # exit status; None when killed
    seconds: float  # from start to exit or kill
    killed: bool  # True when SIGKILL ended it (it was still running at the delay)


ZYGOTE = r"""
import json, os, signal, sys, time
import torch, transformers, safetensors  # noqa: F401  imported once, inherited by every fork
import sizewise.cli, sizewise.commands.compress, sizewise.commands.prune, sizewise.commands.export  # noqa: F401
import sizewise.compression.checkpoint, sizewise.compression.streaming, sizewise.io.model_load  # noqa: F401
import sizewise.api, sizewise.compression.apply, sizewise.compression.share, sizewise.compression.sparse  # noqa: F401
import sizewise.compression.prune, sizewise.compression.token_table, sizewise.compression.recovery  # noqa: F401
import sizewise.io.safetensors_scan, sizewise.compression.sizing  # noqa: F401
# transformers and rich import lazily on first use: do it here, once, not in every child
import accelerate, rich.console, rich.progress, rich.table  # noqa: F401,E401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401
import transformers.models.llama.modeling_llama, transformers.activations  # noqa: F401,E401
torch.set_num_threads(1)
out = os.fdopen(os.dup(1), "w", buffering=1)
print(json.dumps({"ready": True}), file=out)
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1); os.dup2(log, 2)
        null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0)
        code = 0
        try:
            sizewise.cli.app(args=job["argv"], prog_name="sizewise", standalone_mode=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback; traceback.print_exc(); code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    killed = False
    if job["delay"] is not None:
        deadline = t0 + job["delay"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            left = deadline - time.perf_counter()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(min(left, 0.002))
    else:
        _, status = os.waitpid(pid, 0)
    secs = time.perf_counter() - t0
    rc = None if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps({"rc": rc, "seconds": secs, "killed": killed}), file=out)
"""


class ForkRunner:
    """A pre-imported helper process that forks one child per run (see the module docstring)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=child_env(env), cwd=ROOT, bufsize=1)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("crash harness helper did not start")

    def run(self, argv: list[str], delay: float | None, log: Path) -> RunResult:
        self.proc.stdin.write(json.dumps({"argv": argv, "delay": delay, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("crash harness helper died")
        r = json.loads(line)
        return RunResult(r["rc"], r["seconds"], r["killed"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class ExecRunner:
    """A fresh `python -m sizewise.cli ARGV` per run."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = child_env(env)

    def run(self, argv: list[str], delay: float | None, log: Path) -> RunResult:
        t0 = time.perf_counter()
        with open(log, "wb") as f:
            p = subprocess.Popen([sys.executable, "-m", "sizewise.cli", *argv], stdout=f, stderr=f,
                                 stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
            try:
                rc = p.wait(timeout=delay)
                return RunResult(rc, time.perf_counter() - t0, False)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                return RunResult(None, time.perf_counter() - t0, True)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ one command's campaign

def content_hash(out: Path) -> dict[str, str]:
    """{file: sha256} of an output (a directory's files, or the file itself), without the harness's
    marker and without sizewise.json or export.json, whose `created`/`seconds`/`out` differ from run to run."""
    if out.is_dir():
        return {k: v for k, v in tree_hash(out).items() if k not in (OLD_MARKER, "sizewise.json", "export.json")}
    return {out.name: hashlib.sha256(out.read_bytes()).hexdigest()}


def judge(cmd: Command, out: Path, ref: dict[str, str], old: dict[str, str] | None) -> tuple[str, str | None]:
    """-> (outcome, why-not-complete) for what is under the final name now.

    ref: content_hash of the unkilled run's output, which passed cmd.check (the full load);
    old: content_hash of the output that was there before this run (None: there was none).
    The old one, still there, must be byte-identical to what it was; a new one byte-identical to the
    reference (the commands are deterministic) with a manifest that parses, or else pass the full
    check itself."""
    if not os.path.lexists(out):
        return "absent", None
    if is_marked_old(out):
        if content_hash(out) != old:
            return "half-written", "the old output was modified"
        return "complete-old", None
    if content_hash(out) == ref and (not out.is_dir() or _manifest_ok(out)):
        return "complete-new", None
    why = cmd.check(out)  # differs from the reference: must load on its own
    return ("half-written", why) if why is not None else ("complete-new", None)


def _manifest_ok(out: Path) -> bool:
    if not (out / "sizewise.json").exists():
        return True  # not a sizewise output (export targets): the hash comparison is the check
    try:
        man = json.loads((out / "sizewise.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(man.get("files")) and all((out / f).is_file() for f in man["files"])


def mark_old(out: Path) -> None:
    """Tag the output that exists before a run, so the judge can tell it from a new one afterwards.
    Directories get a marker file inside; a file output is tagged by its inode number."""
    if out.is_dir():
        (out / OLD_MARKER).write_text("old\n")
    else:
        (out.parent / f"{OLD_MARKER}-{out.name}").write_text(str(out.stat().st_ino))


def is_marked_old(out: Path) -> bool:
    if out.is_dir():
        return (out / OLD_MARKER).exists()
    tag = out.parent / f"{OLD_MARKER}-{out.name}"
    return tag.is_file() and tag.read_text() == str(out.stat().st_ino)


def clear_mark(out: Path) -> None:
    tag = out.parent / f"{OLD_MARKER}-{out.name}"
    if tag.exists():
        tag.unlink()


def remove_output(out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif os.path.lexists(out):
        out.unlink()
    clear_mark(out)


def campaign(cmd: Command, src: Path, work: Path, kills: int, rng: random.Random, runner,
             log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure one full run (after a warm-up run), then `kills` runs killed at uniform delays in [0, 1.2 x that run's
    duration] (half of them onto an existing output: the --force replace path), judging after each;
    then one run to completion: it must leave no temp siblings. Returns the counts and every trial."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / cmd.out_name
    logf = work / "run.log"
    before = tree_hash(src)
    runner.run(cmd.argv(src, out), None, logf)  # warm-up: page cache, first-use imports in the helper's children
    ref = runner.run(cmd.argv(src, out), None, logf)  # the measured run (replacing the warm-up's output)
    if ref.rc != 0 or cmd.check(out) is not None:
        raise RuntimeError(f"{cmd.name}: the unkilled run failed (rc {ref.rc}): {logf.read_text()[-2000:]}")
    duration, ref_hash = ref.seconds, content_hash(out)
    counts = {"absent": 0, "complete-new": 0, "complete-old": 0, "half-written": 0, "run-failed": 0}
    trials, input_changed, max_siblings, lost_old = [], 0, 0, 0
    finished_before_kill = 0
    complete = True  # is what is under the final name now a complete output (judged)?
    for i in range(kills):
        replace = rng.random() < 0.5
        old = None
        if replace:
            if not complete:
                remove_output(out)
                r0 = runner.run(cmd.argv(src, out), None, logf)  # an old output to be replaced
                if r0.rc != 0 or content_hash(out) != ref_hash:
                    raise RuntimeError(f"{cmd.name}: setup run failed: {logf.read_text()[-2000:]}")
            mark_old(out)
            old = content_hash(out)
        else:
            remove_output(out)
        delay = rng.uniform(0.0, 1.2 * duration)
        r = runner.run(cmd.argv(src, out), delay, logf)
        outcome, why = judge(cmd, out, ref_hash, old)
        if not r.killed:
            finished_before_kill += 1
            if r.rc != 0:
                outcome, why = "run-failed", f"rc {r.rc}: {logf.read_text()[-300:]}"
        restored = False
        if replace and outcome == "absent":
            # only the two-rename fallback (no renameat2 exchange) can get here: killed with the old output
            # moved aside. The next run's first step is recover(); do exactly that and judge again.
            from sizewise.io.atomic import recover
            restored = bool(recover(out)["restored"])
            outcome, why = judge(cmd, out, ref_hash, old)
            if outcome != "complete-old":
                lost_old += 1  # the old output is gone for good: as bad as a half-written one
        complete = outcome.startswith("complete")
        counts[outcome] += 1
        changed = tree_hash(src) != before
        input_changed += changed
        sib = siblings(out)
        max_siblings = max(max_siblings, len(sib))
        trials.append({"i": i, "delay_s": round(delay, 4), "replace": replace, "killed": r.killed,
                       "seconds": round(r.seconds, 4), "outcome": outcome, "restored_by_recover": restored, "why": why, "input_changed": changed,
                       "temp_siblings": len(sib)})
        log(f"{cmd.name} #{i}: delay {delay:.3f}s {'replace' if replace else 'fresh'} -> {outcome}"
            f"{' (finished first)' if not r.killed else ''}{' why: ' + why if why else ''}; temps {len(sib)}")
        clear_mark(out)
    final = runner.run(cmd.argv(src, out), None, logf)
    left = siblings(out)
    return {"command": cmd.name, "argv": cmd.argv(Path("SRC"), Path("OUT")), "run_seconds": round(duration, 3),
            "runs": kills, "killed": kills - finished_before_kill, "finished_before_kill": finished_before_kill,
            "outcomes": counts, "old_output_lost": lost_old,
            "restored_by_recover": sum(t["restored_by_recover"] for t in trials), "input_changed": input_changed,
            "max_temp_siblings_after_a_kill": max_siblings, "final_run_rc": final.rc,
            "final_complete": final.rc == 0 and cmd.check(out) is None, "temp_siblings_after_next_run": len(left),
            "temp_siblings_left": left, "trials": trials}
