"""A/B serving: --ab parsing, the split (sticky and seeded), the front app on a live localhost server with
two tiny variants, labelled metrics, /v1/ab against what was sent, the registry record, the memory check."""
import json
import math
from types import SimpleNamespace

import httpx
import pytest
import torch
from typer.testing import CliRunner

from sizewise.cli import app as cli_app
from sizewise.commands.serve_ab import build_engines
from sizewise.errors import SizewiseError
from sizewise.serve.ab import HEADER, ABApp, Router, VariantSpec, parse_ab, plan_variants, user_point
from sizewise.serve.ab_memory import MemoryNeed, check_memory, recipe_format, variant_need
from sizewise.serve.engine import EngineConfig
from sizewise.serve.server import BackgroundServer

from . import tiny

SERVED = "tiny"


def six_sigma(n: int, p: float) -> float:
    """A binomial count stays within 6 standard deviations of n*p except with probability ~2e-9."""
    return 6 * math.sqrt(n * p * (1 - p))


# -- parsing ---------------------------------------------------------------------------------

def test_parse_ab_accepts_source_recipe_share(tmp_path):
    assert parse_ab("bundled=0.1") == ("bundled", None, 0.1)
    assert parse_ab("bundled:int8-wo=0.25") == ("bundled", "int8-wo", 0.25)
    d = tmp_path / "a:b"  # a path that holds ':' is taken whole
    d.mkdir()
    assert parse_ab(f"{d}=0.5") == (str(d), None, 0.5)


@pytest.mark.parametrize("spec, says", [
    ("bundled", "expected SOURCE[:RECIPE]=SHARE"),
    ("bundled=x", "is not a number"),
    ("bundled=0", "between 0 and 1"),
    ("bundled=1", "between 0 and 1"),
    ("bundled=-0.2", "between 0 and 1"),
    ("bundled:=0.2", "empty recipe"),
    ("=0.2", "no model source"),
    ("/no/such/dir=0.2", "not found"),
    ("bundled:int9-wo=0.2", "int9-wo"),
    ("bundled:int4-gptq-g64=0.2", "needs calibration"),
])
def test_bad_ab_specs_are_one_line_errors(spec, says):
    with pytest.raises(SizewiseError) as e:
        plan_variants("bundled", None, "bundled", [spec])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_shares_must_leave_room_and_names_must_differ():
    with pytest.raises(SizewiseError, match="sum to 1; they must sum to less than 1"):
        plan_variants("bundled", None, "bundled", ["bundled:int8-wo=0.5", "bundled:int4-g64=0.5"])
    with pytest.raises(SizewiseError, match="already taken"):
        plan_variants("bundled", None, "bundled", ["bundled=0.2"])
    with pytest.raises(SizewiseError, match="already taken"):
        plan_variants("bundled", None, "bundled", ["bundled:int8-wo=0.2", "bundled:int8-wo=0.1"])
    with pytest.raises(SizewiseError, match="same model and recipe"):
        plan_variants("bundled", "int8-wo", "prod", ["bundled:int8-wo=0.2"])
    vs = plan_variants("bundled", None, "bundled", ["bundled:int8-wo=0.2", "bundled:int4-g64=0.1"])
    assert [v.name for v in vs] == ["bundled", "bundled:int8-wo", "bundled:int4-g64"]
    assert [v.share for v in vs] == pytest.approx([0.7, 0.2, 0.1])


def test_cli_ab_errors_are_one_line_and_exit_2():
    r = CliRunner().invoke(cli_app, ["serve", "bundled", "--ab", "bundled:int8-wo=1.5"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --ab 'bundled:int8-wo=1.5': share must be between 0 and 1")


# -- routing ---------------------------------------------------------------------------------

VARIANTS = [VariantSpec("A", "a", None, 0.7), VariantSpec("B", "b", None, 0.2), VariantSpec("C", "c", None, 0.1)]


def test_split_by_seeded_rng_is_reproducible_and_near_the_shares():
    n = 20000
    r1, r2 = Router(VARIANTS, seed=7), Router(VARIANTS, seed=7)
    a = [r1.choose() for _ in range(n)]
    assert a == [r2.choose() for _ in range(n)]
    for v in VARIANTS:
        assert abs(a.count(v.name) - n * v.share) < six_sigma(n, v.share), v.name


def test_sticky_by_user_is_deterministic_and_splits_users_by_share():
    r = Router(VARIANTS, seed=1)
    users = [f"user-{i}" for i in range(20000)]
    first = [r.choose(u) for u in users]
    assert first == [Router(VARIANTS, seed=99).choose(u) for u in users]  # the seed does not move users
    assert len({r.choose("alice") for _ in range(50)}) == 1
    for v in VARIANTS:
        assert abs(first.count(v.name) - len(users) * v.share) < six_sigma(len(users), v.share), v.name
    assert 0.0 <= user_point("alice") < 1.0


# -- the live front app ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tok = tiny.byte_tokenizer()
    srcs = {}
    for name, seed in (("A", 0), ("B", 1)):
        m = tiny.tiny_llama(seed=seed, vocab=len(tok), dtype=torch.float32, max_position_embeddings=512)
        d = tmp_path_factory.mktemp(f"variant-{name}")
        m.save_pretrained(d)
        srcs[name] = (str(d), m)
    variants = [VariantSpec("A", srcs["A"][0], None, 0.7), VariantSpec("B", srcs["B"][0], None, 0.3)]
    cfg = EngineConfig(kv_memory_bytes=2 * 1024 * 1024, block_size=8, max_batch=8)
    engines = build_engines(variants, lambda v: SimpleNamespace(model=srcs[v.name][1], tokenizer=tok), cfg)
    ab = ABApp(variants, engines, SERVED, seed=3)
    with BackgroundServer(ab) as srv:
        yield srv, ab, tok
    assert all(e.pool.leaked_blocks() == 0 for e in engines.values())


def _complete(url, user=None, model=SERVED, stream=False, max_tokens=3):
    body = {"model": model, "prompt": "hello", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": stream}
    if user is not None:
        body["user"] = user
    return httpx.post(url + "/v1/completions", json=body, timeout=60)


def test_live_split_sticky_labels_and_ab_numbers(live):
    srv, ab, _ = live
    prev = {v["name"]: v for v in httpx.get(srv.url + "/v1/ab").json()["variants"]}
    sent, tokens = {"A": 0, "B": 0}, {"A": 0, "B": 0}

    def send(**kw):
        r = _complete(srv.url, **kw)
        name = r.headers[HEADER]
        sent[name] += 1
        if r.status_code == 200:
            assert r.json()["model"] == name  # the body says which variant answered, as the header does
            tokens[name] += r.json()["usage"]["completion_tokens"]
        return r

    for i in range(60):
        assert send(user=f"u{i % 20}" if i % 2 else None).status_code == 200
    for u in ("u1", "u2", "u3"):  # sticky: the same user, the same variant, every time
        assert {send(user=u).headers[HEADER] for _ in range(4)} == {ab.router.choose(u)}
    r = send(model="B")  # a pinned request names its variant
    assert r.headers[HEADER] == "B"
    bad = _complete(srv.url, model="nope")  # an unknown model: a 400 naming what is served, from no variant
    assert bad.status_code == 400 and HEADER not in bad.headers
    assert "'tiny'" in bad.json()["error"]["message"] and "'B'" in bad.json()["error"]["message"]
    nostr = send(model=5)  # not a string: the primary's own validation answers
    assert nostr.status_code == 400 and nostr.headers[HEADER] == "A"
    with httpx.stream("POST", srv.url + "/v1/completions", json={"model": SERVED, "prompt": "hi", "max_tokens": 2,
                                                                  "stream": True, "user": "u1"}, timeout=60) as s:
        assert s.headers[HEADER] == ab.router.choose("u1")
        sent[s.headers[HEADER]] += 1
        body = "".join(s.iter_text())
    assert body.rstrip().endswith("data: [DONE]")
    rows = {v["name"]: v for v in httpx.get(srv.url + "/v1/ab").json()["variants"]}
    assert sum(sent.values()) == 60 + 12 + 3 and min(sent.values()) > 0
    for name in ("A", "B"):
        assert rows[name]["requests"] - prev[name]["requests"] == sent[name]
        assert rows[name]["errors"] == 0
        assert rows[name]["latency_s"]["p50"] is not None and rows[name]["ttft_s"]["p95"] is not None
        assert rows[name]["tokens_per_s"] > 0 and rows[name]["decode_tokens_per_s"] > 0
    stream_tokens = {n: 2 * (n == ab.router.choose("u1")) for n in sent}
    for name in ("A", "B"):
        assert rows[name]["completion_tokens"] - prev[name]["completion_tokens"] == tokens[name] + stream_tokens[name]
    assert rows["A"]["client_errors"] - prev["A"]["client_errors"] == 1
    assert rows["B"]["pinned"] - prev["B"]["pinned"] == 1
    text = httpx.get(srv.url + "/metrics").text
    for name in ("A", "B"):
        for metric in ("sizewise_requests_running", "sizewise_kv_blocks_used", "sizewise_generation_tokens_total",
                       "sizewise_time_to_first_token_seconds_bucket"):
            assert any(ln.startswith(metric + "{") and f'variant="{name}"' in ln for ln in text.splitlines()), (metric, name)
        assert f'sizewise_alert_level{{alert="memory",variant="{name}"}}' in text
        gen = [ln for ln in text.splitlines() if ln.startswith(f'sizewise_generation_tokens_total{{variant="{name}"}}')]
        assert float(gen[0].split()[-1]) == rows[name]["completion_tokens"]
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    assert [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]] == [SERVED, "A", "B"]


def test_split_over_many_requests_is_near_the_shares(live):
    srv, ab, _ = live
    before = {v["name"]: v["requests"] - v["pinned"] for v in ab.summary()["variants"]}
    n = 200
    for _ in range(n):
        assert _complete(srv.url, max_tokens=1).status_code == 200
    got = {v["name"]: v["requests"] - v["pinned"] - before[v["name"]] for v in ab.summary()["variants"]}
    assert got["A"] + got["B"] == n
    assert abs(got["B"] - 0.3 * n) < six_sigma(n, 0.3)


def test_registry_records_the_split_with_every_variant_id(live, tmp_path):
    from sizewise.registry import Registry
    from sizewise.registry.results import record_result, serve_ab_records

    srv, ab, _ = live
    _complete(srv.url)
    summary = ab.summary()
    reg = str(tmp_path / "reg.sqlite")
    ids = record_result("serve-ab", lambda: serve_ab_records(summary, reg), registry=reg,
                        warn=lambda m: pytest.fail(m))
    assert len(ids) == 2 and len(set(ids)) == 2
    with Registry.open(reg) as r:
        for mid, v in zip(ids, summary["variants"]):
            runs = r.runs(mid)
            assert runs[-1]["verb"] == "serve-ab"
            split = runs[-1]["extra"]["ab"]["variants"]
            assert [s["id"] for s in split] == ids and [s["share"] for s in split] == [0.7, 0.3]
            m = {x["name"]: x["value"] for x in r.metrics(mid)}
            assert m["ab.requests"] == v["requests"] and m["ab.errors"] == 0 and "ab.latency_p95_s" in m


# -- memory ----------------------------------------------------------------------------------

def test_recipe_formats():
    assert recipe_format(None, "fp32") == "fp32"
    assert recipe_format("int8-wo", "fp32") == "int8"
    assert recipe_format("int4-gptq-g64", "fp32") == "int4-g64"
    assert recipe_format("int4-ct-g128", "fp32") == "int4-ct-g128"
    assert recipe_format("my.json", "bf16") == "bf16"


def test_memory_check_counts_every_variant_and_refuses_in_one_line(tmp_path):
    cfg = tiny.tiny_llama(seed=0, vocab=32000, dtype=torch.float32).config
    (tmp_path / "m").mkdir()
    cfg.to_json_file(tmp_path / "m" / "config.json")
    a = variant_need("A", str(tmp_path / "m"), None, "fp32", 1_000_000, 8)
    b = variant_need("B", str(tmp_path / "m"), "int8-wo", "fp32", 1_000_000, 8)
    assert a.weights == a.load_peak > b.weights > 0 and b.load_peak == a.load_peak
    need = a.resident + b.resident + (b.load_peak - b.weights)
    assert check_memory([a, b], available=need)["needed_bytes"] == need
    with pytest.raises(SizewiseError) as e:
        check_memory([a, b], available=need - 1)
    assert "\n" not in str(e.value) and "2 A/B variants need about" in str(e.value) and "available" in str(e.value)


def test_cli_refuses_before_loading_when_memory_is_small(tmp_path, monkeypatch):
    cfg = tiny.tiny_llama(seed=0, dtype=torch.float32).config
    (tmp_path / "m").mkdir()
    cfg.to_json_file(tmp_path / "m" / "config.json")
    monkeypatch.setenv("SIZEWISE_AVAILABLE_MEMORY", "100KiB")
    r = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "m"), "--ab", f"{tmp_path / 'm'}:int8-wo=0.2",
                                     "--kv-memory", "1KiB"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln[:4].isdigit()]  # log lines carry a date
    assert len(lines) == 1 and lines[0].startswith("error: the 2 A/B variants need about"), r.output


def test_memory_need_dataclass_sums():
    n = MemoryNeed("x", 10, 20, 3, 4, "test")
    assert n.resident == 17


def test_serve_ab_process_records_the_split_on_sigterm(tmp_path):
    """The real CLI: two saved tiny variants, a few requests, SIGTERM -> exit 0 and serve-ab runs in the registry."""
    import os
    import signal
    import subprocess
    import sys

    from sizewise.registry import Registry
    from sizewise.serve.server import free_port, wait_healthy

    tok = tiny.byte_tokenizer()
    for name, seed in (("a", 0), ("b", 1)):
        m = tiny.tiny_llama(seed=seed, vocab=len(tok), dtype=torch.float32, max_position_embeddings=512)
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    port, reg = free_port(), tmp_path / "reg.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sizewise.cli", "serve", str(tmp_path / "a"), "--ab",
                             f"{tmp_path / 'b'}=0.5", "--ab-seed", "0", "--port", str(port), "--kv-memory", "2MiB",
                             "--block-size", "8", "--registry", str(reg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=120)
        seen = {_complete(url, model="a", user=f"u{i}").headers[HEADER] for i in range(12)}
        assert seen == {"a", "b"}
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 0, err
    with Registry.open(str(reg)) as r:
        runs = {}
        for name in ("a", "b"):
            mid = r.identify(str(tmp_path / name)).id
            runs[name] = [x for x in r.runs(mid) if x["verb"] == "serve-ab"]
            assert len(runs[name]) == 1
    total = sum(x["extra"]["ab"]["numbers"]["requests"] for v in runs.values() for x in v)
    assert total == 12 and "variant b:" in err
