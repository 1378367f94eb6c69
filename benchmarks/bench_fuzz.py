"""Fuzz a real `sizewise serve` (issue 16): thousands of generated bodies, concurrent valid streams beside them.

Bodies (seeded, `--bodies`, default 3000), in five families:
  mutated   a valid completion/chat body with 1-3 fields replaced by a hostile value (wrong types, -5, 10^12,
            bools, 2^64, huge and empty strings, lone surrogates, image parts, nested lists, ...)
  json      arbitrary JSON values (random trees) as the whole body
  bytes     a valid body with bytes flipped, inserted or cut; random bytes; non-UTF-8
  literal   NaN / Infinity / 1e999, 5000-digit integers, nesting 10^5 deep
  oversized bodies over --max-body-bytes, with Content-Length and chunked
plus the reported bug body ({"prompt": [-5, 1000000000000]}) and a share of fully valid requests.
Meanwhile --streams clients loop over fixed greedy streaming requests; each answer must equal the one
recorded before the fuzzing started (text and token count). Afterwards the server's /health and /metrics
give leaked KV blocks, failed steps and counted 500s.

Targets: 5xx = 0, valid requests failed or altered = 0, leaked KV blocks = 0, every error OpenAI-shaped.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_fuzz.py [--bodies 3000] [--model tiny|bundled]
  -> benchmarks/results/fuzz.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_harness import ROOT, ServeProcess, tiny_model_dir  # noqa: E402

HOSTILE = [None, True, False, 0, -1, -5, 1, 2, 3, 10**12, 2**63, 2**64, -(2**64), 10**40, 0.5, -0.0, 1e308, -1e308, 2.5,
           1e-300, "", "x", "5", "\ud800", "\x00", "a" * 5000, [], [1], [-5, 10**12], [True], [1.5], [[1, 2], [3]], [[[1]]],
           ["a", "b"], {}, {"a": 1}, {"type": "image_url", "image_url": {"url": "http://x"}}, [{"type": "text"}],
           [{"type": "image_url"}], {"1": 200}, {"-1": 1}, {"x": 1}, ["a", "b", "c", "d", "e"], [""]]
FIELDS_C = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "best_of", "stream", "stop", "seed",
            "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs", "echo", "suffix",
            "stream_options", "stop_token_ids", "ignore_eos", "user", "max_completion_tokens"]
FIELDS_CHAT = [f for f in FIELDS_C if f not in ("prompt", "echo", "suffix", "best_of")] + [
    "messages", "tools", "tool_choice", "response_format", "top_logprobs"]


def rand_json(rng: random.Random, depth: int = 0):
    k = rng.randrange(8 if depth < 4 else 5)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice([rng.randint(-10, 300), rng.randint(-2**70, 2**70)])
    if k == 3:
        return rng.uniform(-1e6, 1e6)
    if k == 4:
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x2FFF)])) for _ in range(rng.randint(0, 12)))
    if k in (5, 6):
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rand_json(rng, 9) if False else f"k{rng.randint(0, 9)}": rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def valid_body(rng: random.Random, name: str, chat: bool) -> dict:
    b = {"model": name, "max_tokens": rng.randint(1, 4), "temperature": rng.choice([0, 0.7, 1.0]), "stream": rng.random() < 0.5}
    if chat:
        b["messages"] = [{"role": "user", "content": rng.choice(["hi", "tell me", "x y z"])}]
    else:
        b["prompt"] = rng.choice(["hello", "The cat", [1, 72, 105], [[1, 5, 6]], ["one prompt"]])
    if rng.random() < 0.5:
        b.update(rng.choice([{"stop": ["\n"]}, {"seed": 7}, {"top_p": 0.9, "top_k": 20}, {"logit_bias": {"65": 5}},
                             {"presence_penalty": 0.5, "frequency_penalty": 0.2}, {"repetition_penalty": 1.1}]))
    return b


def make_bodies(rng: random.Random, name: str, n: int, limit: int) -> list[tuple[str, str, bytes]]:
    """(family, path, raw body) triples."""
    out = [("reported_bug", "/v1/completions", json.dumps({"model": name, "prompt": [-5, 1000000000000], "max_tokens": 2}).encode())]
    while len(out) < n:
        chat = rng.random() < 0.4
        path = "/v1/chat/completions" if chat else "/v1/completions"
        u = rng.random()
        if u < 0.45:
            b = valid_body(rng, name, chat)
            for _ in range(rng.randint(1, 3)):
                f = rng.choice(FIELDS_CHAT if chat else FIELDS_C)
                if f == "messages" and rng.random() < 0.6:
                    b[f] = [{"role": rng.choice(["user", "system", "wizard", None, 5]),
                             "content": rng.choice(HOSTILE)} for _ in range(rng.randint(0, 2))]
                else:
                    b[f] = rng.choice(HOSTILE)
            out.append(("mutated", path, json.dumps(b).encode("utf-8", "surrogatepass")))
        elif u < 0.60:
            out.append(("json", path, json.dumps(rand_json(rng)).encode()))
        elif u < 0.75:
            raw = bytearray(json.dumps(valid_body(rng, name, chat)).encode())
            for _ in range(rng.randint(1, 3)):
                if not raw:
                    break
                op, i = rng.randrange(3), rng.randrange(len(raw))
                if op == 0:
                    raw[i] = rng.randrange(256)
                elif op == 1:
                    raw[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
                else:
                    del raw[i:]
            if rng.random() < 0.15:
                raw = bytearray(rng.randbytes(rng.randint(0, 64)))
            out.append(("bytes", path, bytes(raw)))
        elif u < 0.80:
            base = valid_body(rng, name, chat)
            s = json.dumps(base)
            lit = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000])
            key = rng.choice(["temperature", "top_p", "seed", "max_tokens"])
            s = s[:-1] + f', "{key}": {lit}}}'
            if rng.random() < 0.2:
                s = "[" * 100000 + "]" * 100000
            out.append(("literal", path, s.encode()))
        elif u < 0.81:
            out.append(("oversized", path, json.dumps({"model": name, "prompt": "a" * (limit + 10)}).encode()))
        else:
            out.append(("valid", path, json.dumps(valid_body(rng, name, chat)).encode()))
    return out


def openai_shaped(r: httpx.Response) -> bool:
    try:
        err = r.json()["error"]
    except Exception:  # noqa: BLE001
        return False
    return set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and bool(err["message"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bodies", type=int, default=3000)
    ap.add_argument("--model", default="tiny", help="tiny (the tests' random llama) or bundled")
    ap.add_argument("--concurrency", type=int, default=4, help="fuzzing clients")
    ap.add_argument("--streams", type=int, default=3, help="concurrent valid streaming clients")
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sizewise-fuzz-"))
    model = str(tiny_model_dir(work / "tiny", 1024)) if a.model == "tiny" else a.model
    srv = ServeProcess(model, "--kv-memory", "128MiB", "--max-body-bytes", str(a.max_body_bytes), "--latency-target", "0",
                       log_path=work / "serve.log")
    srv.start()
    try:
        run(a, srv, work)
    finally:
        srv.stop()


def run(a, srv: ServeProcess, work: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from sizewise.evaluate.machine import command_line, machine_info
    from sizewise.io.atomic import atomic_write_json

    rng = random.Random(a.seed)
    bodies = make_bodies(rng, srv.name, a.bodies, a.max_body_bytes)

    prompts = [[1] + [4 + (11 * i + j) % 250 for j in range(4 + 5 * i)] for i in range(4)]

    def valid_stream(c: httpx.Client, p: list[int]) -> tuple[str, int] | str:
        text, toks = [], 0
        body = {"model": srv.name, "prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stream": True}
        try:
            with c.stream("POST", srv.url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    return f"status {r.status_code}"
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        obj = json.loads(line[6:])
                        if "error" in obj:
                            return obj["error"]["message"]
                        if obj.get("choices"):
                            text.append(obj["choices"][0]["text"])
                        if obj.get("usage"):
                            toks = obj["usage"]["completion_tokens"]
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"
        return "".join(text), toks

    with httpx.Client(timeout=120) as c:
        baseline = [valid_stream(c, p) for p in prompts]
    assert all(isinstance(b, tuple) and b[1] == 8 for b in baseline), baseline

    stop = threading.Event()
    valid_stats = Counter()
    valid_errors: list[str] = []

    def streamer(k: int):
        with httpx.Client(timeout=120) as c:
            i = k
            while not stop.is_set():
                got = valid_stream(c, prompts[i % 4])
                if got == baseline[i % 4]:
                    valid_stats["ok"] += 1
                elif isinstance(got, tuple):
                    valid_stats["altered"] += 1
                    valid_errors.append(f"altered: {got!r} != {baseline[i % 4]!r}")
                else:
                    valid_stats["failed"] += 1
                    valid_errors.append(got)
                i += 1

    by_status: Counter = Counter()
    by_family: dict[str, Counter] = {}
    bad_shape, five_xx = [], []
    lock = threading.Lock()
    local = threading.local()

    def send(item):
        fam, path, raw = item
        c = getattr(local, "c", None) or setattr(local, "c", httpx.Client(timeout=120)) or local.c
        try:
            if fam == "oversized" and len(by_status) % 2:  # half of them chunked (no Content-Length)
                r = c.post(srv.url + path, content=iter([raw[i:i + 65536] for i in range(0, len(raw), 65536)]),
                           headers={"content-type": "application/json"})
            else:
                r = c.post(srv.url + path, content=raw, headers={"content-type": "application/json"})
            status = r.status_code
        except httpx.HTTPError as e:
            status, r = f"transport:{type(e).__name__}", None
        with lock:
            by_status[str(status)] += 1
            by_family.setdefault(fam, Counter())[str(status)] += 1
            if r is not None and status >= 500:
                five_xx.append({"family": fam, "status": status, "body": raw[:200].decode("utf-8", "replace"),
                                "reply": r.text[:200]})
            if r is not None and status >= 400 and not openai_shaped(r):
                bad_shape.append({"family": fam, "status": status, "reply": r.text[:200]})

    threads = [threading.Thread(target=streamer, args=(k,), daemon=True) for k in range(a.streams)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    console = Console()
    with console.status(f"sending {len(bodies)} bodies"), ThreadPoolExecutor(a.concurrency) as pool:
        list(pool.map(send, bodies))
    wall = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(timeout=120)
    st = srv.wait_idle()
    health = srv.health()
    m500 = srv.metric("sizewise_api_errors_total", 'status="500"')
    isolated = srv.metric("sizewise_isolated_failures_total")
    after = httpx.post(srv.url + "/v1/completions", json={"model": srv.name, "prompt": prompts[0], "max_tokens": 8,
                                                          "temperature": 0, "ignore_eos": True}, timeout=60)
    rc = srv.stop()

    result = {
        "benchmark": "bench_fuzz", "command": command_line(), "machine": machine_info(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": a.model, "seed": a.seed,
        "bodies_sent": len(bodies), "wall_s": wall, "bodies_per_s": len(bodies) / wall,
        "by_status": dict(sorted(by_status.items())), "by_family": {k: dict(v) for k, v in sorted(by_family.items())},
        "5xx": sum(v for k, v in by_status.items() if k.isdigit() and int(k) >= 500), "5xx_examples": five_xx[:5],
        "errors_not_openai_shaped": len(bad_shape), "bad_shape_examples": bad_shape[:5],
        "valid_streams": {"ok": valid_stats["ok"], "failed": valid_stats["failed"], "altered": valid_stats["altered"],
                          "examples": valid_errors[:5]},
        "valid_failed_or_altered": valid_stats["failed"] + valid_stats["altered"],
        "leaked_kv_blocks": st["kv_leaked_blocks"], "kv_blocks_used_after": st["kv_blocks_used"],
        "server": {"crashed_steps": st["crashed_steps"], "failed_steps": st["failed_steps"], "counted_500s": m500,
                   "isolated_failures": isolated, "finished": health["engine"]["finished"],
                   "answers_after": after.status_code == 200 and after.json()["choices"][0]["text"] == baseline[0][0],
                   "exit_status": rc},
    }
    atomic_write_json(Path(a.out), result)
    t = Table(title=f"bench_fuzz: {len(bodies)} bodies against sizewise serve ({a.model}), {a.streams} valid streams beside")
    for col in ("family", "sent", "2xx", "400", "413", "other 4xx", "5xx"):
        t.add_column(col, justify="right")
    for fam, cnt in sorted(by_family.items()):
        n = sum(cnt.values())
        s2 = sum(v for k, v in cnt.items() if k.startswith("2"))
        s5 = sum(v for k, v in cnt.items() if k.startswith("5"))
        o4 = sum(v for k, v in cnt.items() if k.startswith("4") and k not in ("400", "413"))
        t.add_row(fam, str(n), str(s2), str(cnt.get("400", 0)), str(cnt.get("413", 0)), str(o4), str(s5))
    console.print(t)
    console.print(f"5xx: {result['5xx']} (target 0); errors not OpenAI-shaped: {len(bad_shape)}; valid streams ok "
                  f"{valid_stats['ok']}, failed {valid_stats['failed']}, altered {valid_stats['altered']} (target 0); "
                  f"leaked KV blocks {st['kv_leaked_blocks']} (target 0); counted 500s {m500:.0f}; "
                  f"{len(bodies) / wall:.0f} bodies/s")
    console.print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
