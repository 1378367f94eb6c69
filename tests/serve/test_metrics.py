"""Alerts trip at their thresholds (fake clock, fed values) and the Prometheus names are exposed."""
import logging

import torch

from sizewise.serve.kv_pool import KVLayout, KVPool
from sizewise.serve.metrics import AlertMonitor, EngineMetrics, default_rules


def test_alert_levels_at_default_thresholds(caplog):
    mon = AlertMonitor()
    with caplog.at_level(logging.WARNING, logger="sizewise.serve"):
        st = {s.name: s for s in mon.evaluate({"latency_p95": 0.4, "memory": 0.5, "fragmentation": 0.1})}
        assert all(s.level == 0 for s in st.values())
        st = {s.name: s for s in mon.evaluate({"latency_p95": 0.7, "memory": 0.9, "fragmentation": 0.2})}
        assert all(s.level == 1 for s in st.values()) and not caplog.records
        st = {s.name: s for s in mon.evaluate({"latency_p95": 1.2, "memory": 0.96, "fragmentation": 0.31})}
    assert all(s.level == 2 for s in st.values())
    assert "quantize" in st["latency_p95"].remedy and "prune" in st["latency_p95"].remedy
    assert "batch" in st["memory"].remedy and "restart" in st["fragmentation"].remedy
    assert len([r for r in caplog.records if "ALERT" in r.getMessage()]) == 3
    mon.evaluate({"latency_p95": 1.5, "memory": 0.97, "fragmentation": 0.4})  # still alerting: logged once only
    assert len([r for r in caplog.records if "ALERT" in r.getMessage()]) == 3
    assert {a.name for a in mon.active()} == {"latency_p95", "memory", "fragmentation"}
    assert mon.evaluate({"memory": 0.9})[0].level == 2  # between the lines: an alert stays raised
    assert mon.evaluate({"memory": 0.5})[0].level == 0
    assert mon.evaluate({"memory": 0.9})[0].level == 1  # from normal, the same value is only a warning


def test_thresholds_are_configurable():
    mon = AlertMonitor(default_rules(latency_normal=0.05, latency_alert=0.1))
    assert mon.evaluate({"latency_p95": 0.2})[0].level == 2


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_latency_window_and_gauges_and_names():
    clock = FakeClock()
    m = EngineMetrics(window_s=60, clock=clock)
    for _ in range(100):
        m.on_token(False, 2.0)  # slow tokens long ago
    clock.t += 120
    m.on_token(True, 0.3)
    for _ in range(99):
        m.on_token(False, 0.1)
    assert m.latency_p95() == 0.1  # the old slow tokens fell out of the window
    pool = KVPool(KVLayout("gqa", 1, torch.float32, num_kv_heads=1, head_dim=1), 20, 4)
    for i in range(10):
        pool.reserve(i, 5)  # 2 blocks each, 3 of 8 slots unused
    states = {s.name: s for s in m.update(running=3, waiting=2, pool=pool)}
    assert states["memory"].level == 2 and states["fragmentation"].level == 2 and states["latency_p95"].level == 0
    text = m.exposition().decode()
    for name in ("sizewise_requests_running 3.0", "sizewise_requests_waiting 2.0", "sizewise_kv_blocks_used 20.0",
                 "sizewise_kv_blocks_free 0.0", "sizewise_kv_fragmentation_ratio 0.375",
                 "sizewise_time_to_first_token_seconds_count 1.0", "sizewise_inter_token_latency_seconds_count 199.0",
                 "sizewise_e2e_request_latency_seconds", "sizewise_generation_tokens_per_second",
                 "sizewise_process_resident_memory_bytes", 'sizewise_alert_level{alert="memory"} 2.0'):
        assert name in text, name


def test_variant_label_on_every_series_and_one_registry_for_many_engines():
    from sizewise.serve.metrics import MetricFamilies

    fam = MetricFamilies(variant_label=True)
    a, b = EngineMetrics(variant="A", families=fam), EngineMetrics(variant="B", families=fam)
    pool = KVPool(KVLayout("gqa", 1, torch.float32, num_kv_heads=1, head_dim=1), 20, 4)
    a.on_token(True, 0.2)
    b.on_token(True, 0.3)
    b.on_token(False, 0.1)
    a.on_finish("length", 0.5)
    a.update(running=1, waiting=0, pool=pool)
    b.update(running=2, waiting=1, pool=pool)
    text = a.exposition().decode()
    assert text == b.exposition().decode()  # one registry, both variants
    for line in ('sizewise_requests_running{variant="A"} 1.0', 'sizewise_requests_running{variant="B"} 2.0',
                 'sizewise_generation_tokens_total{variant="B"} 2.0', 'sizewise_requests_total{finish_reason="length",variant="A"} 1.0',
                 'sizewise_alert_level{alert="memory",variant="B"} 0.0'):
        assert line in text, line
    series = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert all('variant="' in ln for ln in series)  # every series says which variant it belongs to
    plain = EngineMetrics().exposition().decode()
    assert "variant=" not in plain and "sizewise_requests_running 0.0" in plain  # a single-model server is as before
