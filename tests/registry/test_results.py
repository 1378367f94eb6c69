"""Verb results -> registry records, for the verbs whose real runs are too slow to repeat here
(study, bench-serve, export): the shapes below are those the verbs write."""
from __future__ import annotations

from sizewise.registry import Registry
from sizewise.registry.hashing import identify
from sizewise.registry.results import (bench_serve_records, export_records, record_result, study_records)


def _record(verb, recs):
    return record_result(verb, lambda: recs, warn=lambda m: (_ for _ in ()).throw(AssertionError(m)))


def test_bench_serve_records_throughput_per_concurrency(reg_path, fake_model):
    model = fake_model("m/model.safetensors")
    res = {"model": "m", "dtype": "fp32", "recipe": None, "workload": {"requests": 4, "max_tokens": 3, "seed": 0},
           "engine": {"block_size": 16}, "machine": {"cpu": "X", "cores": 2}, "command": "sizewise bench-serve m",
           "serve": [{"concurrency": 1, "tokens_per_s": 10.0}, {"concurrency": 4, "tokens_per_s": 30.0}],
           "baseline_sequential": {"tokens_per_s": 8.0}}
    [mid] = _record("bench-serve", bench_serve_records(res, model, "out.json"))
    with Registry.open() as reg:
        m = {x["name"]: x for x in reg.metrics(mid)}
        assert m["tokens_per_s.c4"]["value"] == 30.0 and m["baseline_sequential.tokens_per_s"]["value"] == 8.0
        assert m["tokens_per_s.c1"]["protocol"]["workload"]["requests"] == 4
        run = reg.get(mid)["runs"][0]
        assert run["machine"] == {"cpu": "X", "cores": 2} and run["command"] == "sizewise bench-serve m"
        assert run["artifacts"] == ["out.json"]


def test_study_records_parent_and_kept_variants_only(reg_path, fake_model, tmp_path):
    parent = fake_model("parent.gguf", b"p")
    out = tmp_path / "study"
    fake_model("study/variants/int8-wo/model.safetensors", b"v")
    q = {"ppl": 15.0, "n_predicted": 8176, "window": 512}
    st = {"settings": {"window": 512, "corpus": "c"}, "parent": {"params": {"total": 99}, "load_s": 1.0, "quality": q},
          "recipes": [{"recipe": "fp32", "quality": q, "bytes": 5},
                      {"recipe": "int8-wo", "quality": {**q, "ppl": 15.1, "kld": 0.01, "top1": 0.97}, "bytes": 3,
                       "speed": {"prefill_tok_s": 100.0, "prefill_tokens": 512, "decode_tok_s": {"1": 20.0}}}]}
    ids = _record("study", study_records(st, parent, str(out), keep=True))
    assert len(ids) == 2  # fp32 was not kept on disk: no files, no record
    with Registry.open() as reg:
        v = reg.get(ids[1])
        assert v["parent"] == identify(parent).id
        m = {x["name"]: x for x in v["metrics"]}
        assert m["ppl"]["tokens"] == 8176 and m["bytes_on_disk"]["value"] == 3 and m["decode_tok_s.b1"]["value"] == 20
        assert {x["name"] for x in reg.metrics(ids[0])} >= {"ppl", "params.total", "load_s"}


def test_export_records_link_the_export_to_its_source(reg_path, fake_model):
    src = fake_model("src/model.safetensors", b"s")
    out = fake_model("model.gguf", b"g")
    rep = {"target": "gguf", "bytes": 1, "bytes_on_disk": 1, "kld": 0.002, "kld_vs_src": 0.002,
           "measure_tokens": 2048, "requantized": [{"name": "x"}], "exact": []}
    [mid] = _record("export", export_records(rep, src, out))
    with Registry.open() as reg:
        d = reg.get(mid)
        assert d["parent"] == identify(src).id and d["recipe_name"] == "export-gguf" and d["kind"] == "gguf"
        assert {x["name"]: x["tokens"] for x in d["metrics"]}["kld"] == 2048


def test_record_result_warns_once_and_never_raises(tmp_path):
    said = []
    ids = record_result("eval", lambda: [{"model": str(tmp_path / "missing.gguf")}], warn=said.append)
    assert ids == [] and len(said) == 1 and said[0].startswith("warning: not recorded in the registry: model not found")
    assert record_result("eval", lambda: 1 / 0, enabled=False) == []
