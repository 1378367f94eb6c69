"""bench-serve --peer: peers start, are measured by the same client, are skipped with one line when missing
or broken, and leave no process behind (fake peers from fake_openai_server.py; sizewise on a tiny model)."""
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
import torch

from sizewise.commands.bench_peers import run_servers
from sizewise.errors import SizewiseError
from sizewise.serve.openai_load import TextReq, request_body, run_text_load, story_workload
from sizewise.serve.peers import PEERS, Launch, PeerContext, PeerProcess, PeerSpec, parse_peers

from . import tiny

FAKE = Path(__file__).with_name("fake_openai_server.py")


def _alive_with(tag: str) -> list[int]:
    """Pids (not zombies) whose command line contains tag."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if tag in cmd and state not in ("Z", "X") and int(d.name) != os.getpid():
            out.append(int(d.name))
    return out


def _fake(name: str, tag: str, *extra: str, missing: str | None = None) -> PeerSpec:
    def launch(ctx, port):
        return Launch([sys.executable, str(FAKE), "--port", str(port), "--tag", tag, *extra], weights="none", dtype="fake")
    return PeerSpec(name, lambda ctx: missing, launch)


def _ctx(tmp_path) -> PeerContext:
    return PeerContext(model="none", served_name="bench", workdir=tmp_path, threads=1)


def test_story_workload_and_body():
    w = story_workload(1)
    assert len(w) == 8 and len(story_workload(16)) == 32
    assert w[3].prompt == "Write a short story about the number 3. Then continue. Then continue. Then continue."
    assert w[5].prompt == "Write a short story about the number 5." and all(r.max_tokens == 64 and not r.exact for r in w)
    b = request_body("m", w[0])
    assert b["temperature"] == 0 and b["stream"] and "ignore_eos" not in b and "min_tokens" not in b
    b = request_body("m", TextReq("x", 7, True))
    assert b["ignore_eos"] is True and b["min_tokens"] == 7


def test_unknown_peer_is_one_clear_error():
    assert [p.name for p in parse_peers("llamacpp, vllm,llamacpp")] == ["llamacpp", "vllm"]
    with pytest.raises(SizewiseError, match=r"unknown --peer 'sglang': valid peers are vllm, llamacpp"):
        parse_peers("vllm,sglang")
    from typer.testing import CliRunner

    from sizewise.cli import app
    r = CliRunner().invoke(app, ["bench-serve", "bundled", "--peer", "vllm,sglang"])
    assert r.exit_code == 2 and "valid peers are vllm, llamacpp" in r.output and "Traceback" not in r.output


def test_fake_peers_run_skip_and_leave_nothing(tmp_path):
    tag = f"peer-test-{uuid.uuid4().hex}"
    servers = [_fake("a", tag, "--child"), _fake("broken", tag, "--exit-at-start", "3"),
               _fake("absent", tag, missing="not installed here"), _fake("b", tag, "--usage")]
    said: list[str] = []
    rows, skipped = run_servers(servers, _ctx(tmp_path), [1, 3], "story", None, 30, said.append)
    assert [r["name"] for r in rows] == ["a", "b"]
    for row, src in zip(rows, ("chunks", "usage")):
        assert [s["concurrency"] for s in row["levels"]] == [1, 3]
        for s in row["levels"]:
            n = len(story_workload(s["concurrency"]))
            assert s["completed_ok"] == s["requests"] == n and s["output_tokens"] == 64 * n
            assert s["tokens_from"] == src and s["ttft_s"]["p50"] <= s["ttft_s"]["p95"] and s["tokens_per_s"] > 0
    assert {s["name"]: s["reason"] for s in skipped}.keys() == {"broken", "absent"}
    broken = next(s["reason"] for s in skipped if s["name"] == "broken")
    assert "exited with status 3 before it answered" in broken and "refusing to start" in broken
    assert "peer absent: skipped (not installed here)" in said
    assert sum(line.startswith("peer broken: skipped (exited with status 3") for line in said) == 1
    assert _alive_with(tag) == []  # peers and the child of "a" are gone


def test_interrupt_mid_load_still_stops_the_peer(tmp_path):
    tag = f"peer-test-{uuid.uuid4().hex}"

    def say(line):
        if " c=1:" in line:
            assert len(_alive_with(tag)) == 2  # the peer and its child are up while measured
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_servers([_fake("a", tag, "--child")], _ctx(tmp_path), [1, 2], "story", None, 30, say)
    assert _alive_with(tag) == []


def test_start_timeout_is_a_skip(tmp_path):
    tag = f"peer-test-{uuid.uuid4().hex}"
    slow = PeerSpec("slow", lambda ctx: None,
                    lambda ctx, port: Launch([sys.executable, "-c", "import time; time.sleep(60)", tag]))
    rows, skipped = run_servers([slow], _ctx(tmp_path), [1], "story", None, 1.5, lambda m: None)
    assert rows == [] and "did not answer within 2 s" in skipped[0]["reason"]
    assert _alive_with(tag) == []


def test_cli_sizewise_runs_and_missing_peers_are_skipped(tmp_path):
    """The real path: `sizewise serve` as a subprocess on a tiny model, both real peers missing."""
    from typer.testing import CliRunner

    from sizewise.cli import app

    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=1024)
    mdir = tmp_path / f"m-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    nolib = tmp_path / "python-without-server-extras"
    nolib.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'sse_starlette'\" >&2\nexit 1\n")
    nolib.chmod(0o755)
    out = tmp_path / "peers.json"
    r = CliRunner().invoke(app, ["bench-serve", str(mdir), "--peer", "vllm,llamacpp", "--vllm-python", str(tmp_path / "no"),
                                 "--llamacpp-python", str(nolib), "--requests", "3", "--max-tokens", "4",
                                 "--concurrency", "1,2", "--kv-memory", "4MiB", "--block-size", "8", "--out", str(out)],
                           env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.exit_code == 0, r.output
    assert f"peer vllm: skipped (no vLLM at {tmp_path / 'no'}" in r.output
    assert "peer llamacpp: skipped (llama_cpp.server is not importable" in r.output and "sse_starlette" in r.output
    res = json.loads(out.read_text())
    assert res["machine"]["cores"] >= 1 and res["command"] and res["benchmark"] == "bench_serve_peers"
    assert [s["name"] for s in res["servers"]] == ["sizewise"] and [s["name"] for s in res["skipped"]] == ["vllm", "llamacpp"]
    want = sum(res["workload"]["output_tokens"])
    for s in res["servers"][0]["levels"]:
        assert s["completed_ok"] == 3 and s["output_tokens"] == want and s["tokens_from"] == "usage"
    assert _alive_with(str(mdir)) == []


def test_peer_process_reports_a_missing_executable(tmp_path):
    from sizewise.serve.peers import PeerUnavailable
    p = PeerProcess("x", Launch([str(tmp_path / "nope")]), 1, tmp_path / "x.log")
    with pytest.raises(PeerUnavailable, match="could not start"):
        p.start(5)
    assert set(PEERS) == {"vllm", "llamacpp"}


def test_a_peer_that_raises_while_launching_is_skipped_and_the_next_runs(tmp_path):
    tag = f"peer-test-{uuid.uuid4().hex}"

    def boom(ctx, port):
        raise ValueError("The model is quantized with gguf and is not serializable")

    rows, skipped = run_servers([PeerSpec("boom", lambda ctx: None, boom), _fake("a", tag)], _ctx(tmp_path), [1],
                                "story", None, 30, lambda m: None)
    assert [r["name"] for r in rows] == ["a"] and skipped[0]["name"] == "boom"
    assert skipped[0]["reason"].startswith("failed: ValueError: The model is quantized")
    assert _alive_with(tag) == []


def test_a_stream_that_never_finishes_is_not_ok(tmp_path):
    tag = f"peer-test-{uuid.uuid4().hex}"
    rows, skipped = run_servers([_fake("cut", tag, "--no-done")], _ctx(tmp_path), [2], "story", None, 30, lambda m: None)
    s = rows[0]["levels"][0]
    assert skipped == [] and s["completed_ok"] == 0 and s["failed"] == s["requests"] == 8 and s["output_tokens"] == 0
    assert "ended without a finish_reason or [DONE] after 64 tokens" in s["errors"][0]
