"""Safetensors header scan: exact names/dtypes/shapes/offsets, shards, sparse huge sets, broken files."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from math import prod

import pytest
import torch
from safetensors.torch import save_file

from sizewise.errors import SizewiseError
from sizewise.io import safetensors_scan
from sizewise.io.safetensors_scan import read_header, scan_safetensors


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].to(torch.bfloat16)
    return sd


@pytest.fixture(scope="module")
def tiny_sd():
    return _tiny_state_dict()


def test_single_file_matches_tensors(tmp_path, tiny_sd):
    f = tmp_path / "model.safetensors"
    save_file(tiny_sd, f, metadata={"format": "pt"})
    scan = scan_safetensors(f)
    assert {t.name for t in scan.tensors} == set(tiny_sd)
    assert scan.metadata == {"format": "pt"}
    assert scan.numel == sum(v.numel() for v in tiny_sd.values())
    assert scan.file_bytes == f.stat().st_size
    assert scan.data_bytes == sum(v.numel() * v.element_size() for v in tiny_sd.values())
    assert scan.header_bytes + scan.data_bytes == scan.file_bytes
    raw = f.read_bytes()
    for t in scan.tensors:
        ref = tiny_sd[t.name]
        assert t.shape == tuple(ref.shape)
        assert t.dtype == {torch.float32: "F32", torch.bfloat16: "BF16"}[ref.dtype]
        # the offsets point at exactly this tensor's bytes
        got = torch.frombuffer(bytearray(raw[t.start:t.end]), dtype=ref.dtype).reshape(ref.shape)
        assert torch.equal(got, ref)
    by = scan.by_dtype()
    assert by["BF16"].tensors == 1 and by["BF16"].numel == tiny_sd["model.embed_tokens.weight"].numel()


def test_reads_only_the_header(tmp_path, tiny_sd, monkeypatch):
    f = tmp_path / "model.safetensors"
    save_file(tiny_sd, f)
    (n,) = struct.unpack("<Q", f.read_bytes()[:8])
    read_total = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, k=-1):
            b = self.fh.read(k)
            read_total.append(len(b))
            return b

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    monkeypatch.setattr(safetensors_scan, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    scan_safetensors(f)
    assert sum(read_total) == 8 + n < f.stat().st_size
    monkeypatch.undo()
    # what the kernel delivered: exactly the header, no read-ahead into the data
    with open("/proc/self/io") as fh:
        before = next(int(ln.split()[1]) for ln in fh if ln.startswith("rchar:"))
    scan_safetensors(f)
    with open("/proc/self/io") as fh:
        after = next(int(ln.split()[1]) for ln in fh if ln.startswith("rchar:"))
    assert after - before < 8 + n + 2000  # the /proc read itself adds a few hundred bytes


def test_sharded_dir_and_index_agree(tmp_path, tiny_sd):
    names = sorted(tiny_sd)
    parts = [names[0::3], names[1::3], names[2::3]]
    weight_map = {}
    for k, part in enumerate(parts):
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: tiny_sd[n] for n in part}, tmp_path / fname)
        weight_map.update({n: fname for n in part})
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a, b = scan_safetensors(tmp_path), scan_safetensors(idx)
    assert len(a.files) == 3 and a.files == b.files
    assert {t.name for t in a.tensors} == set(tiny_sd)
    assert a.numel == b.numel == sum(v.numel() for v in tiny_sd.values())
    assert {t.name: t.file.name for t in a.tensors} == weight_map

    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(SizewiseError, match="model-00002-of-00003.safetensors.*missing"):
        scan_safetensors(tmp_path)


def test_index_naming_a_tensor_no_shard_has(tmp_path, tiny_sd):
    save_file(tiny_sd, tmp_path / "model-00001-of-00001.safetensors")
    wm = {n: "model-00001-of-00001.safetensors" for n in tiny_sd}
    wm["model.extra.weight"] = "model-00001-of-00001.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(SizewiseError, match="model.extra.weight"):
        scan_safetensors(tmp_path)


_MEASURE = """
import json, resource, sys, time
from sizewise.io.safetensors_scan import scan_safetensors
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
scan = scan_safetensors(sys.argv[1])
elapsed = time.perf_counter() - t0
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
mtp = f"layers.{sys.argv[2]}."
main = sum(t.numel for t in scan.tensors if not t.name.endswith("weight_scale_inv") and mtp not in t.name)
print(json.dumps({"elapsed": elapsed, "rss_growth": grew, "tensors": len(scan.tensors), "files": len(scan.files),
                  "file_bytes": scan.file_bytes, "data_bytes": scan.data_bytes, "main": main}))
"""


def test_huge_sparse_deepseek_v3_is_fast_and_small(v3_sharded, v3_config):
    """~690 GB over 20 sparse shards, ~92k tensors: headers only, seconds, little memory."""
    files = sorted(v3_sharded.glob("*.safetensors"))
    on_disk = sum(f.stat().st_size for f in files)
    assert on_disk > 300e9
    # a fresh process, so that peak RSS growth is the scan's own
    L = v3_config["num_hidden_layers"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(v3_sharded), str(L)],
                         capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    assert m["elapsed"] < 15, m  # ~1 s on a quiet core; generous for a busy CI machine
    assert m["rss_growth"] < 300e6, m  # headers only (~10 MB of JSON): nowhere near the 690 GB of data
    assert m["file_bytes"] == on_disk and m["files"] == 20
    idx = json.loads((v3_sharded / "model.safetensors.index.json").read_text())
    assert m["data_bytes"] == idx["metadata"]["total_size"]
    assert m["tensors"] == len(idx["weight_map"])
    # cross-check with SOURCES.md: 671,026,419,200 (params + e_score_correction_bias buffers), without
    # the MTP layer (index >= num_hidden_layers) and without the fp8 scales
    assert m["main"] == 671_026_419_200


def _write(path, header: dict, data_len: int, pad: int = 0) -> None:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)
        if pad:
            f.truncate(8 + len(raw) + data_len + pad)


GOOD = {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}


def test_truncated_data_names_the_file(tmp_path):
    f = tmp_path / "cut.safetensors"
    _write(f, GOOD, 40)  # needs 64 data bytes
    with pytest.raises(SizewiseError, match=r"cut\.safetensors: truncated file: tensor 'a'"):
        read_header(f)


@pytest.mark.parametrize("content,match", [
    (b"\x10\x00", "shorter than the 8-byte header length"),
    (struct.pack("<Q", 500) + b"{}", "header length 500 runs past the file size"),
    (struct.pack("<Q", 2**40), "exceeds the format's 100 MB limit"),
    (struct.pack("<Q", 5) + b"{nope", "invalid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_broken_headers(tmp_path, content, match):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(SizewiseError, match=match) as e:
        read_header(f)
    assert str(f) in str(e.value)


@pytest.mark.parametrize("entry,match", [
    ({"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}, "needs 64 bytes but its data_offsets span 60"),
    ({"dtype": "Q9", "shape": [4], "data_offsets": [0, 4]}, "unknown dtype 'Q9'"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "bad dtype/shape/data_offsets"),
    ({"dtype": "F32", "shape": [1]}, "bad dtype/shape/data_offsets"),
])
def test_bad_entries(tmp_path, entry, match):
    f = tmp_path / "bad.safetensors"
    _write(f, {"a": entry}, 64)
    with pytest.raises(SizewiseError, match=match):
        read_header(f)


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(SizewiseError, match="no such file"):
        scan_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(SizewiseError, match="no \\*.safetensors files"):
        scan_safetensors(tmp_path)
    # sub-byte dtypes are sized in bits: 10 F4 values take 5 bytes
    f = tmp_path / "f4.safetensors"
    _write(f, {"q": {"dtype": "F4", "shape": [10], "data_offsets": [0, 5]}}, 5)
    (t,) = read_header(f)[0]
    assert t.nbytes == 5 and t.numel == prod((10,))


def test_shard_tensor_missing_from_index(tmp_path, tiny_sd):
    save_file(tiny_sd, tmp_path / "model-00001-of-00001.safetensors")
    wm = {n: "model-00001-of-00001.safetensors" for n in tiny_sd if n != "model.norm.weight"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(SizewiseError, match="'model.norm.weight' is in model-00001-of-00001.safetensors but the index says None"):
        scan_safetensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(SizewiseError, match="not a valid safetensors index"):
        scan_safetensors(tmp_path)
