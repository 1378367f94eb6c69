"""`sizewise export --to onnx`: the graph runs in onnxruntime with its own KV cache and computes what
sizewise computes; bad input is one error line and leaves nothing behind.

Tiny llamas are built here (fixed seeds); the bundled model gets one engine check with few tokens."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from serve import tiny  # noqa: E402  (tests/serve/tiny.py)

from sizewise.cli import app  # noqa: E402
from sizewise.export import onnx as X  # noqa: E402

runner = CliRunner()


def _hf_dir(tmp_path, name="src", tok=True, **over):
    t = tiny.byte_tokenizer()
    m = tiny.tiny_llama(dtype=torch.float32, vocab=len(t), **over)
    d = tmp_path / name
    m.save_pretrained(d)
    if tok:
        t.save_pretrained(d)
    return m, d


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_fp32_layout_logits_and_greedy_with_cache(tmp_path):
    m, src = _hf_dir(tmp_path)
    out = tmp_path / "onnx"
    r = X.export(str(src), out, measure_tokens=0)
    # the optimum / onnxruntime-genai layout
    dec = X.OnnxDecoder(out)
    ins = [i.name for i in dec.sess.get_inputs()]
    outs = [o.name for o in dec.sess.get_outputs()]
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert outs == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    for f in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "genai_config.json", "sizewise_export.json"):
        assert (out / f).is_file(), f
    gc = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
    assert (gc["num_key_value_heads"], gc["head_size"], gc["num_hidden_layers"]) == (2, 16, 2)
    assert r["bytes"] == sum(f.stat().st_size for f in out.iterdir())
    assert r["requantized"] == [] and r["kld_vs_src"] is None and not r["external_data"]
    # whole-window logits, and greedy decoding one token at a time through past/present
    ids = tiny.prompts(1, vocab=m.config.vocab_size, lo=40, hi=41)[0]
    assert torch.allclose(X.window_logits(dec, ids), _logits(m, ids), atol=1e-4)
    for p in tiny.prompts(3, vocab=m.config.vocab_size):
        assert X.greedy_tokens(dec, p, 16) == tiny.hf_greedy(m, p, 16)
    # a batch with left padding: attention_mask and position_ids are honoured
    a, b = [5, 9, 33, 71, 12, 8], [40, 41, 42]
    feed_ids = np.array([a, [0] * 3 + b])
    mask = np.array([[1] * 6, [0] * 3 + [1] * 3])
    pos = np.array([list(range(6)), [0, 0, 0, 0, 1, 2]])
    empty = np.zeros((2, 2, 0, 16), np.float32)
    res = dec.sess.run(["logits"], {"input_ids": feed_ids, "attention_mask": mask, "position_ids": pos,
                                    **{n: empty for n in dec.past_names}})[0]
    assert np.allclose(res[1, -1], _logits(m, b)[-1].numpy(), atol=1e-4)


def _packed_dir(tmp_path, recipe, **cfg_over):
    import sizewise
    from sizewise.compression.checkpoint import save_compressed
    from sizewise.compression.recipes import Int4WeightOnlyConfig, RECIPES
    t = tiny.byte_tokenizer()
    base = tiny.tiny_llama(dtype=torch.float32, vocab=len(t), hidden_size=128, intermediate_size=256,
                           tie_word_embeddings=True)
    cfg = RECIPES[recipe] if isinstance(recipe, str) else Int4WeightOnlyConfig(**recipe)
    calib = torch.randint(4, len(t), (2, 32), generator=torch.Generator().manual_seed(0)) \
        if cfg.needs_calibration else None
    m = sizewise.compress(copy.deepcopy(base), cfg, calib_tokens=calib)
    d = tmp_path / "packed"
    save_compressed(m, t, d, None, None)
    return d


@pytest.mark.parametrize("recipe,op_bits", [
    (dict(group_size=32, embed="int8"), {4, 8}),  # float zero (fp32 stream) + int8 token table, tied head
    (dict(group_size=64, zero="int", grid="minmax", embed="int8"), {4, 8}),  # compressed-tensors integer zero
    ("int8-wo", {8}),
])
def test_packed_codes_become_matmulnbits_and_match_sizewise(tmp_path, recipe, op_bits):
    import onnx
    from sizewise.io.model_load import load_model
    d = _packed_dir(tmp_path, recipe)
    out = tmp_path / "onnx"
    r = X.export(str(d), out, measure_tokens=0, accuracy_int8=0)  # fp32 compute everywhere: exact check
    assert r["requantized"] == []
    g = onnx.load(str(out / "model.onnx"))
    bits = {a.i for n in g.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == op_bits
    assert r["ops"]["com.microsoft.MatMulNBits"] == 14 + (1 if 8 in op_bits and recipe != "int8-wo" else 0)
    lm = load_model(str(d))
    lm.model.float()  # a bf16-stream checkpoint (int zero, int8-wo) computed in fp32 like the exported graph
    from sizewise.compression.packed import Int4WeightOnlyLinear
    for mod in lm.model.modules():  # sizewise's kernels in fp32: the same weights, computed in fp32
        if hasattr(mod, "act_dtype"):
            mod.act_dtype = torch.float32
        if type(mod) is Int4WeightOnlyLinear:  # its kernel rounds zero = (8 - zp) * s to bf16; the graph
            s = mod.weight_scale.float()            # computes (q - zp) * s exactly: compare in fp32
            mod._sz = torch.stack([s, (8 - mod.weight_zero_point.float()) * s], -1).transpose(0, 1).contiguous()
    ids = tiny.prompts(1, vocab=len(tiny.byte_tokenizer()), lo=30, hi=31)[0]
    ref, got = _logits(lm.model, ids), X.window_logits(X.OnnxDecoder(out), ids)
    if recipe == "int8-wo":  # its head is the fp32 stream's bf16 matmul + fp32 top-32: compare the top-32
        idx = ref.topk(32, -1).indices
        ref, got = ref.gather(-1, idx), got.gather(-1, idx)
    assert torch.allclose(got, ref, atol=2e-5), float((got - ref).abs().max())


def test_fp16_type_lists_the_rounding_and_measures_kld(tmp_path):
    m, src = _hf_dir(tmp_path)
    r = X.export(str(src), tmp_path / "onnx16", type_="fp16", measure_tokens=256)
    assert r["type"] == "fp16" and len(r["requantized"]) > 0
    assert all(q["to"] == "fp16" for q in r["requantized"])
    assert r["kld_vs_src"] is not None and 0 <= r["kld_vs_src"] < 1e-3
    dec = X.OnnxDecoder(tmp_path / "onnx16")
    assert dec.np_dtype == np.float16
    ids = tiny.prompts(1, vocab=m.config.vocab_size, lo=20, hi=21)[0]
    assert torch.allclose(X.window_logits(dec, ids), _logits(m, ids), atol=2e-2)


def test_qwen2_biases_and_external_data(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    t = tiny.byte_tokenizer()
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(t), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                     tie_word_embeddings=True)).eval()
    for n, p in m.named_parameters():
        if n.endswith("bias"):
            torch.nn.init.normal_(p, std=0.5)
    src = tmp_path / "qwen"
    m.save_pretrained(src)
    t.save_pretrained(src)
    out = tmp_path / "onnx"
    r = X.export(str(src), out, measure_tokens=0, external_data_bytes=1000)
    assert r["external_data"] and (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert r["files"]["model.onnx.data"] == (out / "model.onnx.data").stat().st_size
    ids = tiny.prompts(1, vocab=len(t), lo=20, hi=21)[0]
    assert torch.allclose(X.window_logits(X.OnnxDecoder(out), ids), _logits(m, ids), atol=1e-4)


# --- bad input: one error line, exit 2, nothing written ---

def _cli(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def _one_error_line(r):
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_unknown_type_lists_valid(tmp_path):
    _, src = _hf_dir(tmp_path)
    line = _one_error_line(_cli(src, "--to", "onnx", "--out", tmp_path / "o", "--type", "int3"))
    assert "fp32, fp16" in line and not (tmp_path / "o").exists()


def test_unmapped_architecture_is_named(tmp_path):
    t = tiny.byte_tokenizer()
    src = tmp_path / "ds"
    tiny.tiny_deepseek_v3(vocab=len(t), dtype=torch.float32).save_pretrained(src)
    t.save_pretrained(src)
    line = _one_error_line(_cli(src, "--to", "onnx", "--out", tmp_path / "o"))
    assert "deepseek_v3" in line and not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_existing_out_is_refused_and_untouched(tmp_path):
    _, src = _hf_dir(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = _one_error_line(_cli(src, "--to", "onnx", "--out", out))
    assert "already exists" in line and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_corrupt_and_truncated_sources(tmp_path):
    _, src = _hf_dir(tmp_path)
    st = src / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])  # truncated
    line = _one_error_line(_cli(src, "--to", "onnx", "--out", tmp_path / "o"))
    assert str(src) in line or "corrupt" in line
    st.write_bytes(b"\x00" * 64)  # garbage
    _one_error_line(_cli(src, "--to", "onnx", "--out", tmp_path / "o"))
    gg = tmp_path / "bad.gguf"
    gg.write_bytes(b"GGUF" + b"\x00" * 100)
    _one_error_line(_cli(gg, "--to", "onnx", "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_missing_tokenizer(tmp_path):
    _, src = _hf_dir(tmp_path, tok=False)
    line = _one_error_line(_cli(src, "--to", "onnx", "--out", tmp_path / "o"))
    assert "tokenizer" in line and not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_w8a8_needs_allow_requantize(tmp_path):
    d = _packed_dir(tmp_path, "int8-dyn")
    line = _one_error_line(_cli(d, "--to", "onnx", "--out", tmp_path / "o"))
    assert "int8-dyn" in line and "--allow-requantize" in line and not (tmp_path / "o").exists()
    r = X.export(str(d), tmp_path / "o", allow_requantize=True, measure_tokens=0)
    assert any("weight-only" in n for n in r["notes"])


# --- the bundled model: its own Q4_1 / Q8_0 blocks in onnxruntime against sizewise ---

@pytest.mark.slow
def test_bundled_gguf_blocks_greedy_and_ppl(tmp_path, bundled_model):
    from sizewise.evaluate.data import eval_tokens
    from sizewise.evaluate.generate import greedy, make_decoder
    from sizewise.evaluate.metrics import perplexity
    out = tmp_path / "bundled-onnx"
    r = X.export("bundled", out, measure_tokens=0, threads=2, loaded=bundled_model)
    assert r["ops"]["com.microsoft.MatMulNBits"] == 211  # 210 Q4_1 Linears + the tied Q8_0 head
    assert any("Q4_1 blocks" in e for e in r["exact"]) and r["requantized"] == []
    assert r["bytes"] < 130e6  # the blocks, not 538 MB of fp32
    dec = X.OnnxDecoder(out, threads=2)
    tok = bundled_model.tokenizer
    sd = make_decoder(bundled_model.model, 1, 64)
    for p in ("The capital of France is", "def fibonacci(n):"):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        assert X.greedy_tokens(dec, ids, 16) == greedy(sd, torch.tensor([ids]), 16)[0].tolist()
    toks = eval_tokens(tok, 512)
    ours, theirs = X.perplexity(dec, toks)["ppl"], perplexity(bundled_model.model, toks).ppl
    assert abs(ours / theirs - 1) < 0.01
