"""The registry store: identity by content, the hash cache, IDs and prefixes, tags, gc, schema and file failures."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from sizewise.errors import SizewiseError
from sizewise.registry import SCHEMA_VERSION, Registry, record_run
from sizewise.registry import hashing, store
from sizewise.registry.hashing import Identity


def test_record_run_stores_model_run_and_canonical_metrics(reg_path, fake_model):
    parent = fake_model("p/model.safetensors", b"parent")
    child = fake_model("c/model.safetensors", b"child")
    mid = record_run("eval", model=child, parent=parent, recipe={"name": "int4-g64", "group": 64},
                     metrics={"ppl": {"value": 15.5, "tokens": 8176}, "top1_agreement": 0.9, "parameters": 1234,
                              "decode_tok_s": {"b1": 30.0, "b8": 150.0}, "skipped": None},
                     protocol={"corpus": "pydoc", "window": 512}, artifacts=["x.json"], extra={"note": "n"})
    assert len(mid) == 64
    with Registry.open() as reg:
        m = reg.get(mid[:8])
        assert m["id"] == mid and m["recipe_name"] == "int4-g64" and m["recipe"]["group"] == 64
        assert m["parent"] == reg.resolve(parent)  # parent recorded by path, found by path
        by = {x["name"]: x for x in m["metrics"]}
        assert set(by) == {"ppl", "top1", "params.total", "decode_tok_s.b1", "decode_tok_s.b8"}
        assert by["ppl"]["tokens"] == 8176 and by["ppl"]["protocol"]["window"] == 512 and by["ppl"]["verb"] == "eval"
        run = m["runs"][0]
        assert run["n_metrics"] == 5 and run["artifacts"] == ["x.json"] and run["extra"] == {"note": "n"}
        assert run["versions"]["sizewise"] and run["machine"]["cores"] >= 1 and run["command"]
        assert m["lineage"]["ancestors"] == [m["parent"], mid]


def test_same_content_is_one_model_and_cache_skips_rehash(reg_path, fake_model, monkeypatch):
    a = fake_model("a.safetensors", b"same bytes")
    b = fake_model("copy/b.safetensors", b"same bytes")
    calls = []
    real = hashing.sha256_stream
    monkeypatch.setattr(hashing, "sha256_stream", lambda p: calls.append(str(p)) or real(p))
    assert record_run("eval", model=a) == record_run("eval", model=b)
    assert len(calls) == 2
    record_run("eval", model=a)
    assert len(calls) == 2  # unchanged size + mtime: served from the cache
    with open(a, "ab") as f:
        f.write(b"!")
    changed = record_run("eval", model=a)
    assert len(calls) == 3 and changed != record_run("eval", model=b)
    with Registry.open() as reg:
        assert len(reg.list_models()) == 2


def test_directory_id_covers_tensor_files_not_config(reg_path, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"w")
    (d / "config.json").write_text("{}")
    first = hashing.identify(d)
    (d / "config.json").write_text('{"changed": 1}')
    assert hashing.identify(d).id == first.id and first.kind == "safetensors"
    (d / "model.safetensors").write_bytes(b"w2")
    assert hashing.identify(d).id != first.id


def test_bundled_and_presets_are_models(reg_path):
    pid = record_run("estimate", model="smollm2-135m", metrics={"params.total": 134515008})
    with Registry.open() as reg:
        m = reg.get(pid)
        assert m["kind"] == "preset" and m["name"] == "HuggingFaceTB/SmolLM2-135M" and m["files_present"]
    bid = record_run("eval", model="bundled")
    with Registry.open() as reg:
        assert reg.get(bid)["name"] == "bundled" and reg.get(bid)["kind"] == "gguf"
    with pytest.raises(SizewiseError, match="preset"):
        record_run("eval", model="no-such-model-xyz")


def _ident(i: str, name: str) -> Identity:
    return Identity(i, "safetensors", name, None, [])


def test_prefix_ambiguous_unknown_list_candidates(reg_path):
    with Registry.open() as reg:
        reg.record("eval", _ident("abcd1" + "0" * 59, "one"))
        reg.record("eval", _ident("abcd2" + "0" * 59, "two"))
        assert reg.resolve("abcd1") == "abcd1" + "0" * 59
        with pytest.raises(SizewiseError, match=r"ambiguous ID prefix 'abcd'.*abcd1.*\(one\).*abcd2.*\(two\)"):
            reg.resolve("abcd")
        with pytest.raises(SizewiseError, match=r"unknown model ID 'ab' \(an ID prefix needs 4 characters.*abcd"):
            reg.resolve("ab")  # shorter than 4 characters: never a prefix match
        with pytest.raises(SizewiseError, match=r"unknown model ID 'ffff'; recorded models: .*\(one\)"):
            reg.resolve("ffff")


def test_tags_resolve_filter_and_validate(reg_path, fake_model):
    a = record_run("eval", model=fake_model("a.gguf", b"a"), metrics={"ppl": 20.0})
    b = record_run("eval", model=fake_model("b.gguf", b"b"), metrics={"ppl": 10.0})
    with Registry.open() as reg:
        reg.tag(b[:6], "production")
        reg.tag(a, "candidate")
        assert reg.resolve("production") == b
        assert [m["id"] for m in reg.list_models(tag="candidate")] == [a]
        assert [m["id"] for m in reg.list_models(metric="ppl<15")] == [b]
        assert [m["id"] for m in reg.list_models(metric="ppl>=20")] == [a]
        assert reg.list_models(metric="kld") == []
        reg.tag(b, "production", remove=True)
        assert reg.get(b)["tags"] == []
        for bad in ("abc", "9lives", "has space"):
            with pytest.raises(SizewiseError, match="tag"):
                reg.tag(a, bad)
        with pytest.raises(SizewiseError, match="not a number"):
            reg.list_models(metric="ppl<low")


def test_gc_forgets_gone_files_but_keeps_ancestors_of_live_models(reg_path, fake_model):
    root = fake_model("root.safetensors", b"r")
    mid = fake_model("mid.safetensors", b"m")
    leaf = fake_model("leaf.safetensors", b"l")
    lone = fake_model("lone.safetensors", b"x")
    ids = {n: record_run("compress", model=p, parent=par) for n, p, par in
           (("mid", mid, root), ("leaf", leaf, mid), ("lone", lone, None))}
    os.unlink(mid)
    os.unlink(lone)
    with Registry.open() as reg:
        dry = reg.gc(dry_run=True)
        assert dry["models_removed"] == [ids["lone"]] and len(reg.list_models()) == 4
        res = reg.gc()
        assert res["models_removed"] == [ids["lone"]] and set(res["paths_removed"]) == {mid, lone}
        kept = reg.get(ids["mid"])  # files gone, still the leaf's parent
        assert kept["files_present"] is False and kept["paths"] == []
        assert reg.lineage(ids["leaf"])["depth"] == 2


def test_newer_schema_refused_in_one_line(reg_path, fake_model):
    record_run("eval", model=fake_model("a.gguf"))
    c = sqlite3.connect(reg_path)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(SizewiseError) as e:
        Registry.open(reg_path)
    assert "newer than this sizewise reads" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_corrupt_file_reported_and_left_untouched(reg_path, fake_model, damage):
    if damage == "garbage":
        reg_path.write_bytes(b"this is not a database" * 100)
    else:  # a real registry whose pages after the header are overwritten
        for i in range(30):
            record_run("eval", model=fake_model(f"m{i}.gguf", bytes([i])), metrics={f"x{j}": j for j in range(50)})
        data = bytearray(reg_path.read_bytes())
        assert not os.path.exists(str(reg_path) + "-wal") or os.path.getsize(str(reg_path) + "-wal") == 0
        data[100:len(data) - 100] = os.urandom(len(data) - 200)
        reg_path.write_bytes(bytes(data))
    before = reg_path.read_bytes()
    with pytest.raises(SizewiseError, match="not a readable registry.*left untouched"):
        Registry.open(reg_path)
    assert reg_path.read_bytes() == before


def test_locked_registry_waits_then_one_line(reg_path, fake_model):
    record_run("eval", model=fake_model("a.gguf"))
    holder = sqlite3.connect(reg_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        import time
        t0 = time.monotonic()
        with Registry.open(reg_path, timeout=0.3) as reg, pytest.raises(SizewiseError, match="locked by another process"):
            reg.record("eval", _ident("e" * 64, "x"))
        assert time.monotonic() - t0 >= 0.3
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_missing_registry_reads_empty_and_creates_nothing(tmp_path):
    p = tmp_path / "none" / "registry.sqlite"
    with Registry.open(p, create=False) as reg:
        assert reg.list_models() == []
        with pytest.raises(SizewiseError, match="is empty"):
            reg.get("abcd")
    assert not p.exists()


def test_migrations_run_in_order_once(tmp_path, monkeypatch):
    p = tmp_path / "r.sqlite"
    Registry.open(p).close()
    assert sqlite3.connect(p).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert sqlite3.connect(p).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    applied = []

    def v_next(c):
        applied.append(1)
        c.execute("CREATE TABLE extra_v2 (x TEXT)")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, v_next])
    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    Registry.open(p).close()
    Registry.open(p).close()
    assert applied == [1]
    c = sqlite3.connect(p)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert c.execute("SELECT name FROM sqlite_master WHERE name='extra_v2'").fetchone()


def test_bad_metrics_are_bad_input(reg_path, fake_model):
    with pytest.raises(SizewiseError, match="must be a number"):
        record_run("eval", model=fake_model("a.gguf"), metrics={"ppl": "low"})
    with pytest.raises(SizewiseError, match="verb"):
        record_run("", model=fake_model("a.gguf"))
    assert record_run("eval", model="/nonexistent/x.gguf", enabled=False) is None
    with Registry.open(create=False) as reg:
        assert reg.list_models() == []  # nothing half-recorded by the refusals


def test_json_columns_hold_json_not_pickle(reg_path, fake_model):
    record_run("eval", model=fake_model("a.gguf"), recipe={"name": "r"}, protocol={"k": [1, 2]}, metrics={"ppl": 1.5})
    c = sqlite3.connect(reg_path)
    for col in ("recipe", "protocol", "versions", "machine"):
        json.loads(c.execute(f"SELECT {col} FROM runs").fetchone()[0])
