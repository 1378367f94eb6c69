"""Speed functions: behaviour (warm-up, medians, positive rates, memory readings), never speed."""
from __future__ import annotations

import statistics

import torch

from sizewise.evaluate import speed


def test_timed_runs_warmup_then_reports_the_median_of_the_timed_runs():
    calls = []
    t = speed.timed(lambda: calls.append("run"), runs=3, warmup=1, setup=lambda: calls.append("setup"))
    assert calls == ["setup", "run"] * 4  # 1 warm-up + 3 timed, each after its setup
    assert len(t.runs_s) == 3 and t.warmup == 1
    assert t.median_s == statistics.median(t.runs_s)


def test_measure_speed_returns_positive_rates_for_both_batches():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=256)).eval()
    toks = list(torch.randint(0, 101, (600,), generator=torch.Generator().manual_seed(1)).tolist())
    s = speed.measure_speed(m, toks, batches=(1, 8), prefill_tokens=64, steps=4, prompt_len=16, runs=3)
    assert s.prefill_tok_s > 0 and set(s.decode_tok_s) == {1, 8}
    assert all(v > 0 for v in s.decode_tok_s.values())
    assert s.decoder == "lean-static-cache"
    assert s.runs == 3 and len(s.timings["decode_b8"]["runs_s"]) == 3 and s.timings["prefill"]["warmup"] == 1
    assert s.peak_rss_bytes >= speed.rss_bytes() * 0.5 > 0
    d = s.to_dict()
    assert set(d["decode_tok_s"]) == {"1", "8"}


def test_peak_rss_tracks_a_large_allocation():
    import mmap

    speed.reset_peak_rss()
    before = speed.peak_rss_bytes()
    # fresh anonymous pages (not memory the allocator already holds from earlier tests), all touched
    buf = mmap.mmap(-1, 64 * 2**20)
    buf.write(b"\x01" * (64 * 2**20))
    assert speed.peak_rss_bytes() >= before + 48 * 2**20
    buf.close()


def test_dir_bytes_counts_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert speed.dir_bytes(tmp_path) == 15
    assert speed.dir_bytes(tmp_path / "a") == 10


def test_batch1_pass_and_spread():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=256)).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pre, dec = speed.batch1_pass(m, list(range(40)), list(range(8)), steps=5)
    assert pre > 0 and dec > 0
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # timing leaves the model as it was
    s = speed.spread([3.0, 1.0, 2.0])
    assert s == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
