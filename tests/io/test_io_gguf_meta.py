"""GGUF header reading: the bundled model's tensors and config, writer-made files, broken files."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from sizewise.errors import SizewiseError
from sizewise.io import gguf_meta
from sizewise.io.gguf_meta import gguf_tensors, gguf_to_config, read_gguf_header


@pytest.fixture(scope="module")
def reader(bundled_path):
    return GGUFReader(bundled_path)  # gguf-py's own parser: an independent reference


def test_bundled_tensors(bundled_path, reader):
    ts = gguf_tensors(bundled_path)
    assert len(ts) == len(reader.tensors) == 272
    assert sum(t.numel for t in ts) == 134_515_008  # SmolLM2-135M, SOURCES.md
    ref = {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), int(t.data_offset), int(t.n_bytes))
           for t in reader.tensors}
    assert {t.name: (t.ggml_type, t.shape, t.offset, t.nbytes) for t in ts} == ref
    by = {t.name: t for t in ts}
    assert by["token_embd.weight"].ggml_type == "Q8_0"
    assert by["token_embd.weight"].shape == (49152, 576)  # PyTorch order: (vocab, hidden)
    assert by["token_embd.weight"].nbytes == 49152 * 576 // 32 * 34  # Q8_0: 32 values in 34 bytes
    decoder_linear = [t for t in ts if t.name.startswith("blk.") and len(t.shape) == 2]
    assert len(decoder_linear) == 30 * 7 and {t.ggml_type for t in decoder_linear} == {"Q4_1"}
    assert {t.ggml_type for t in ts if len(t.shape) == 1} == {"F32"}
    assert Counter(t.ggml_type for t in ts) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert "output.weight" not in by  # tied head


def test_bundled_config_equals_metadata(bundled_path, reader):
    cfg = gguf_to_config(bundled_path)

    def meta(key):
        return reader.fields[key].contents()

    assert cfg["model_type"] == meta("general.architecture") == "llama"
    assert cfg["hidden_size"] == meta("llama.embedding_length")
    assert cfg["intermediate_size"] == meta("llama.feed_forward_length")
    assert cfg["num_hidden_layers"] == meta("llama.block_count")
    assert cfg["num_attention_heads"] == meta("llama.attention.head_count")
    assert cfg["num_key_value_heads"] == meta("llama.attention.head_count_kv")
    assert cfg["vocab_size"] == meta("llama.vocab_size") == len(reader.fields["tokenizer.ggml.tokens"].data)
    assert cfg["rope_theta"] == pytest.approx(meta("llama.rope.freq_base"))
    assert cfg["rms_norm_eps"] == pytest.approx(meta("llama.attention.layer_norm_rms_epsilon"))
    assert cfg["max_position_embeddings"] == meta("llama.context_length")
    assert cfg["tie_word_embeddings"] is True
    assert cfg["head_dim"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert cfg["bos_token_id"] == meta("tokenizer.ggml.bos_token_id")
    assert cfg["eos_token_id"] == meta("tokenizer.ggml.eos_token_id")


def test_metadata_kept_and_long_arrays_summarised(bundled_path, reader):
    h = read_gguf_header(bundled_path)
    assert h.version == 3 and h.architecture == "llama"
    assert h.metadata["general.name"] == reader.fields["general.name"].contents()
    toks = h.metadata["tokenizer.ggml.tokens"]
    assert isinstance(toks, gguf_meta.GGUFArray) and toks.length == 49152
    assert h.data_start == min(t.offset for t in h.tensors)
    assert h.data_start + h.data_bytes <= h.file_bytes


def test_reads_only_the_header(bundled_path, monkeypatch):
    """No tensor data is read: total bytes read stay below where the data starts."""
    read_total = []
    real_open = open

    def counting_open(*a, **k):
        fh = real_open(*a, **k)
        raw_read = fh.read

        def read(n=-1):
            b = raw_read(n)
            read_total.append(len(b))
            return b

        fh.read = read
        return fh

    monkeypatch.setattr(gguf_meta, "open", counting_open, raising=False)
    h = read_gguf_header(bundled_path)
    assert 0 < sum(read_total) <= h.data_start < h.file_bytes // 10


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("rchar:"))


def test_syscall_reads_stay_near_the_header(bundled_path):
    """What the kernel delivered (buffer read-ahead included): the header plus at most one 64 KiB buffer."""
    read_gguf_header(bundled_path)  # warm imports
    before = _rchar()
    h = read_gguf_header(bundled_path)
    read = _rchar() - before
    assert read <= h.data_start + (1 << 16) + 4096, (read, h.data_start)
    assert read < h.file_bytes // 10


def _write_gguf(path, arch: str, with_output: bool, n_layers: int = 2, hidden: int = 64, vocab: int = 32) -> None:
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, hidden), dtype=np.float32))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((hidden, hidden), dtype=np.float32).astype(np.float16))
        w.add_tensor(f"blk.{i}.attn_q.bias", rng.standard_normal(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    if with_output:
        w.add_tensor("output.weight", rng.standard_normal((vocab, hidden), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_qwen2_gguf_written_by_gguf_py(tmp_path):
    p = tmp_path / "q.gguf"
    _write_gguf(p, "qwen2", with_output=True)
    cfg = gguf_to_config(p)
    assert cfg["model_type"] == "qwen2"
    assert cfg["tie_word_embeddings"] is False
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (64, 2, 2)
    assert cfg["vocab_size"] == 32  # no vocab_size key: taken from token_embd's shape
    assert cfg["rope_theta"] == 1e6
    by = {t.name: t for t in gguf_tensors(p)}
    assert by["blk.0.attn_q.weight"].ggml_type == "F16" and by["blk.0.attn_q.weight"].nbytes == 64 * 64 * 2
    assert by["output.weight"].shape == (32, 64)


def test_unsupported_arch_is_a_clear_error(tmp_path):
    p = tmp_path / "g.gguf"
    _write_gguf(p, "gemma", with_output=False)
    with pytest.raises(SizewiseError, match="architecture 'gemma' has no config mapping.*inspect"):
        gguf_to_config(p)
    assert len(gguf_tensors(p)) == 1 + 2 * 3 + 1  # headers still readable
    from sizewise.commands.inspect import inspect_report

    rep = inspect_report(str(p))
    assert rep["comparison"]["status"] == "skipped" and "gemma" in rep["comparison"]["reason"]
    assert rep["parameters"] == 32 * 64 + 2 * (64 * 64 + 64 + 64) + 64
    assert rep["by_dtype"]["F16"]["params"] == 2 * 64 * 64


def test_truncated_and_bad_gguf(tmp_path, bundled_path):
    src = bundled_path.read_bytes()[:4_000_000]  # header (1.8 MB) + a little data
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src)
    with pytest.raises(SizewiseError, match=r"cut\.gguf: truncated file: tensor '.*' ends at byte"):
        read_gguf_header(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(src[:100_000])  # cut inside the metadata
    with pytest.raises(SizewiseError, match=r"head\.gguf: truncated GGUF header"):
        read_gguf_header(head)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + src[4:1000])
    with pytest.raises(SizewiseError, match="not a GGUF file"):
        read_gguf_header(bad)
    v9 = tmp_path / "v9.gguf"
    v9.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + src[8:1000])
    with pytest.raises(SizewiseError, match="unsupported GGUF version 9"):
        read_gguf_header(v9)


def _write_full_gguf(path, arch: str, tie: bool, L: int = 2, h: int = 64, ff: int = 96, vocab: int = 40) -> None:
    """Every tensor llama.cpp's converter writes for a llama/qwen2 model, tiny and random."""
    heads, kv = 4, 2
    hd = h // heads
    w = GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(1)

    def t(name, *shape):
        w.add_tensor(name, rng.standard_normal(shape, dtype=np.float32))

    t("token_embd.weight", vocab, h)
    for i in range(L):
        t(f"blk.{i}.attn_norm.weight", h)
        t(f"blk.{i}.attn_q.weight", heads * hd, h)
        t(f"blk.{i}.attn_k.weight", kv * hd, h)
        t(f"blk.{i}.attn_v.weight", kv * hd, h)
        if arch == "qwen2":
            t(f"blk.{i}.attn_q.bias", heads * hd)
            t(f"blk.{i}.attn_k.bias", kv * hd)
            t(f"blk.{i}.attn_v.bias", kv * hd)
        t(f"blk.{i}.attn_output.weight", h, heads * hd)
        t(f"blk.{i}.ffn_norm.weight", h)
        t(f"blk.{i}.ffn_gate.weight", ff, h)
        t(f"blk.{i}.ffn_up.weight", ff, h)
        t(f"blk.{i}.ffn_down.weight", h, ff)
    t("output_norm.weight", h)
    if not tie:
        t("output.weight", vocab, h)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch,tie", [("qwen2", False), ("llama", True)])
def test_full_gguf_matches_analytic_inventory(tmp_path, arch, tie):
    from sizewise.commands.inspect import inspect_report

    p = tmp_path / f"{arch}.gguf"
    _write_full_gguf(p, arch, tie)
    rep = inspect_report(str(p))
    assert rep["comparison"]["status"] == "match", rep["comparison"]
    assert rep["parameters"] == sum(t.numel for t in gguf_tensors(p))
    assert ("lm_head" in rep["by_group"]) is (not tie)
    assert gguf_to_config(p)["tie_word_embeddings"] is tie
