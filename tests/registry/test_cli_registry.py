"""Real CLI runs record themselves: lineage across compress -> prune -> compress, eval and share
measurements, the registry verbs (--json everywhere), --no-record, and a failure to record."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sizewise.cli import app
from sizewise.registry import Registry
from sizewise.registry.hashing import identify

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def chain(tiny_src, tmp_path_factory):
    """src -> a (fp16) -> b (magnitude 50 % pruned) -> c (int8-wo of the pruned), all via the CLI,
    recorded into this module's own registry (built once: three compress runs)."""
    import os
    tmp = tmp_path_factory.mktemp("chain")
    old = os.environ.get("SIZEWISE_REGISTRY")
    os.environ["SIZEWISE_REGISTRY"] = str(tmp / "registry.sqlite")
    a, b, c = tmp / "a", tmp / "b", tmp / "c"
    ok("compress", tiny_src, "--recipe", "fp16", "--out", a)
    ok("compress", a, "--prune", "magnitude", "--sparsity", "0.5", "--out", b)
    ok("compress", b, "--recipe", "int8-wo", "--out", c)
    yield {"src": tiny_src, "a": a, "b": b, "c": c, "tmp": tmp}
    os.environ["SIZEWISE_REGISTRY"] = old or ""


def test_lineage_across_compress_prune_compress(chain):
    ids = {k: identify(chain[k]).id for k in ("src", "a", "b", "c")}
    lin = json.loads(ok("registry", "lineage", ids["c"][:10], "--json").output)
    assert lin["ancestors"] == [ids["src"], ids["a"], ids["b"], ids["c"]]
    tree = lin["tree"]
    assert tree["id"] == ids["src"] and tree["children"][0]["id"] == ids["a"]
    assert tree["children"][0]["children"][0]["children"][0]["recipe"] == "int8-wo"
    shown = json.loads(ok("registry", "show", ids["b"][:8], "--json").output)
    assert shown["recipe_name"].startswith("magnitude-0.5") and shown["runs"][0]["verb"] == "prune"
    by = {m["name"]: m["value"] for m in shown["metrics"]}
    assert 0.45 < by["sparsity"] < 0.55 and by["bytes_on_disk"] > 0
    text = ok("registry", "show", ids["c"][:8]).output
    assert "lineage (from the root parent)" in text and "<- this model" in text and ids["src"][:12] in text
    kids = json.loads(ok("registry", "list", "--parent", ids["a"][:8], "--json").output)
    assert [m["id"] for m in kids] == [ids["b"]]
    assert [m["id"] for m in json.loads(ok("registry", "list", "--recipe", "int8", "--json").output)] == [ids["c"]]


def test_eval_records_metrics_with_protocol_and_tokens(chain):
    r = ok("eval", chain["b"], "--against", chain["a"], "--tokens", "300", "--window", "100", "--no-speed", "--json")
    res = json.loads(r.output[r.output.index("{"):])
    assert res["params"]["total"] == res["parameters"] > 0  # vocabulary: canonical name and its alias
    cid, bid = identify(chain["b"]).id, identify(chain["a"]).id
    with Registry.open() as reg:
        m = {x["name"]: x for x in reg.metrics(cid) if x["verb"] == "eval"}
        assert {"ppl", "kld", "top1", "params.total", "bytes_on_disk", "load_s"} <= set(m)
        assert m["ppl"]["tokens"] == res["quality"]["n_predicted"] and m["ppl"]["protocol"]["window"] == 100
        assert m["ppl"]["protocol"]["against"] == str(chain["a"]) and m["params.total"]["value"] == res["params"]["total"]
        parent_ppl = [x for x in reg.metrics(bid) if x["name"] == "ppl"]
        assert parent_ppl and parent_ppl[0]["value"] == pytest.approx(res["parent"]["quality"]["ppl"])
    rows = json.loads(ok("registry", "list", "--metric", "kld>=0", "--json").output)
    assert [x["id"] for x in rows] == [cid]


def test_share_records_top1_under_its_canonical_name(tiny_src, tmp_path, reg_path):
    out = tmp_path / "shared"
    r = ok("share", tiny_src, "--out", out, "--eval-tokens", "300", "--json")
    rec = json.loads(r.output[r.output.index("{"):])
    assert rec["quality"]["top1"] == rec["quality"]["top1_agreement"]
    with Registry.open() as reg:
        m = {x["name"]: x["value"] for x in reg.metrics(identify(out).id)}
        assert m["top1"] == pytest.approx(rec["quality"]["top1"]) and "top1_agreement" not in m
        assert reg.get(identify(out).id)["parent"] == identify(tiny_src).id


def test_tag_gc_and_no_record(chain):
    cid = identify(chain["c"]).id
    ok("registry", "tag", cid[:8], "production")
    tagged = json.loads(ok("registry", "list", "--tag", "production", "--json").output)
    assert [m["id"] for m in tagged] == [cid]
    assert json.loads(ok("registry", "show", "production", "--json").output)["id"] == cid
    n = len(json.loads(ok("registry", "list", "--json").output))
    ok("compress", chain["src"], "--recipe", "bf16", "--out", chain["tmp"] / "d", "--no-record")
    assert len(json.loads(ok("registry", "list", "--json").output)) == n
    ok("compress", chain["src"], "--recipe", "bf16", "--out", chain["tmp"] / "e")
    eid = identify(chain["tmp"] / "e").id
    assert len(json.loads(ok("registry", "list", "--json").output)) == n + 1
    import shutil
    shutil.rmtree(chain["tmp"] / "e")
    gone = json.loads(ok("registry", "gc", "--json").output)
    assert gone["models_removed"] == [eid]
    r = run("registry", "show", eid[:8])
    assert r.exit_code == 2 and "unknown model ID" in r.output and "Traceback" not in r.output


def test_failure_to_record_keeps_output_and_exit_status(tiny_src, tmp_path):
    bad = tmp_path / "broken.sqlite"
    bad.write_bytes(b"not sqlite at all" * 10)
    r = run("compress", tiny_src, "--recipe", "fp16", "--out", tmp_path / "o", "--json", "--registry", bad)
    assert r.exit_code == 0 and (tmp_path / "o" / "sizewise.json").exists()
    assert json.loads(r.stdout)["recipe"] == "fp16"  # stdout is still pure JSON
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "not a readable registry" in warnings[0]
    assert bad.read_bytes() == b"not sqlite at all" * 10
    r = run("registry", "list", "--registry", bad)  # the registry verbs themselves report it as an error
    assert r.exit_code == 2 and r.output.startswith("error: registry") and len(r.output.strip().splitlines()) == 1


def test_registry_verbs_on_empty_registry(reg_path):
    assert json.loads(ok("registry", "list", "--json").output) == []
    assert "no models recorded yet" in ok("registry", "list").output
    assert not reg_path.exists()  # reading creates nothing
    r = run("registry", "tag", "abcd", "production")
    assert r.exit_code == 2 and "unknown model ID 'abcd'" in r.output
