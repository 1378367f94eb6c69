"""Workload shape, percentile maths and the static-batching baseline's measured KV bytes."""
import statistics

import torch

from sizewise.serve.bench import baseline_static
from sizewise.serve.loadgen import Req, mixed_workload, percentile
from sizewise.serve.runner import kv_layout

from . import tiny


def test_mixed_workload_ranges_and_actions():
    tok = tiny.byte_tokenizer()
    reqs = mixed_workload(tok, 400, 32, seed=3, cancel_frac=0.10, disconnect_frac=0.05)
    lens = [len(r.prompt_ids) - 1 for r in reqs]  # minus BOS
    assert all(8 <= n <= 400 for n in lens) and min(lens) <= 32 and max(lens) >= 256
    assert all(8 <= r.max_tokens <= 32 for r in reqs)
    acts = [r.action for r in reqs]
    assert 20 <= acts.count("cancel") <= 60 and 5 <= acts.count("disconnect") <= 40
    assert mixed_workload(tok, 50, 32, seed=3)[7].prompt_ids == mixed_workload(tok, 50, 32, seed=3)[7].prompt_ids


def test_percentile_matches_statistics():
    xs = [float(x) for x in torch.randn(101, generator=torch.Generator().manual_seed(0))]
    qs = statistics.quantiles(xs, n=100, method="inclusive")
    assert abs(percentile(xs, 0.95) - qs[94]) < 1e-12 and abs(percentile(xs, 0.5) - statistics.median(xs)) < 1e-12
    assert percentile([], 0.5) is None


def test_static_baseline_kv_bytes_are_the_padded_cache():
    model = tiny.tiny_llama(seed=0, dtype=torch.float32)
    reqs = [Req([1] + [5] * 6, 3), Req([1] + [6] * 12, 5), Req([1, 7], 2)]
    r = baseline_static(model, reqs, batch=3)
    # 3 rows x (longest prompt 13 + longest max_tokens 5 - 1 token never fed back) x bytes per token
    assert r["peak_kv_bytes"] == 3 * (13 + 5 - 1) * kv_layout(model).bytes_per_token
    assert r["output_tokens"] == 10


def test_soak_with_cancels_and_disconnects_leaks_nothing():
    """The bench's soak (load generator in its own process): 10 % cancelled, 5 % disconnected mid-stream."""
    from sizewise.serve.api import create_app
    from sizewise.serve.bench import soak
    from sizewise.serve.engine import Engine, EngineConfig
    from sizewise.serve.server import BackgroundServer

    tok = tiny.byte_tokenizer()
    model = tiny.tiny_llama(seed=0, vocab=len(tok), dtype=torch.float32, max_position_embeddings=512)
    eng = Engine(model, tok, EngineConfig(kv_memory_bytes=3000 * kv_layout(model).bytes_per_token, block_size=8))
    with BackgroundServer(create_app(eng, "tiny")) as srv:
        r = soak(eng, "tiny", tok, 120, 8, srv.url, max_tokens=6, seed=2)
    assert r["requests"] == 120 and r["failed"] == 0 and r["completed_ok"] >= 90
    assert r["cancelled"] + r["disconnected"] >= 5
    assert r["leaked_blocks"] == 0 and r["blocks_in_use_after"] == 0 and r["engine_idle"]
    assert r["errored_requests"] == 0 and r["crashed_steps"] == 0
    assert r["health_status"] == 200 and r["answers_after"]
    # every request the server saw ended exactly once (a cancelled one may never have reached it), plus the probe
    seen = sum(r["finished_by_reason"].values())
    assert r["completed_ok"] + 1 <= seen <= r["requests"] + 1
    assert r["finished_by_reason"].get("disconnected", 0) <= r["cancelled"] + r["disconnected"]
