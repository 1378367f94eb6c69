"""`sizewise export SRC --to onnx --out DIR [--type fp32|fp16]`: an ONNX Runtime decoder with past key/values.

What it writes (docs/export.md, ONNX section):
  model.onnx (+ model.onnx.data when the weights pass 2 GB: protobuf's limit), the decoder built by
  sizewise/export/onnx_graph.py; tokenizer.json + tokenizer_config.json (+ the tokenizer's other files);
  genai_config.json (onnxruntime-genai's decoder description); sizewise_export.json (the report).

How each source tensor is carried (the report's `exact` / `requantized`):
  float weights      MatMul / Gather / Gemm in --type (fp32 default). fp32 and bf16 sources are exact in fp32;
                     fp16 output re-rounds fp32 tensors (listed, KLD measured), bf16 ones only where fp16 cannot
                     hold them.
  int4 (-asym, -fz)  MatMulNBits bits=4 from the checkpoint's codes, scales and zeros, none re-rounded.
  int8-wo, int8 token table and its tied head
                     MatMulNBits bits=8 (codes + 128, default zero point 128), exact.
  int8-dyn/static    their activations are quantized at run time, which MatMulNBits does not do: refused,
                     or with --allow-requantize written weight-only (exact weights, float activations).
  other packed       (sparse, shared) their dequantized weights as dense float, exact in fp32.
Verification at export: onnxruntime runs the protocol's first window and its logits are compared with the
source model's (max |diff|, top-1 agreement); with anything re-rounded, KLD over --measure-tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sizewise.errors import SizewiseError
from sizewise.export.onnx_graph import ACCURACY_INT8, LinearSpec, LlamaSpec, build

TYPES = ("fp32", "fp16")
ARCHITECTURES = ("llama", "qwen2")  # HF model_type values with the llama block (qwen2: + q/k/v bias)
EXTERNAL_DATA_BYTES = 2 * 10**9 - 64 * 2**20  # protobuf's 2 GiB cap, with room for the graph itself
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
REPORT_FILE = "sizewise_export.json"
CHECK_TOKENS = 64


# --- source tensors -> numpy, with exactness ---

def _np(t, dtype) -> tuple[np.ndarray, bool]:
    """torch tensor -> numpy in `dtype` (fp32/fp16); exact: the value survives the conversion."""
    import torch
    src = t.detach().to(torch.float32).cpu().numpy()  # bf16/fp16/fp32 -> fp32 is exact
    out = src.astype(dtype)
    if out.dtype == src.dtype:
        return out, True
    with np.errstate(over="ignore"):
        return out, bool(np.array_equal(out.astype(np.float32), src))


class _Ledger:
    """What the report says about every source tensor."""

    def __init__(self, dtype, allow_requantize: bool) -> None:
        self.dtype, self.allow = np.dtype(dtype), allow_requantize
        self.exact: list[str] = []
        self.requantized: list[dict] = []
        self.notes: list[str] = []

    def float_tensor(self, name: str, t) -> np.ndarray:
        arr, exact = _np(t, self.dtype)
        if exact:
            self.exact.append(name)
        else:
            self.requantized.append({"name": name, "from": _tname(t), "to": _dname(self.dtype)})
        return arr

    def quant_params(self, name: str, tensors: dict) -> dict:
        """Scales / zeros of a packed weight in the graph dtype: must be exact, else needs --allow-requantize."""
        out, lossy = {}, []
        for k, t in tensors.items():
            if t is None:
                out[k] = None
                continue
            out[k], exact = _np(t, self.dtype)
            if not exact:
                lossy.append(k)
        if lossy and not self.allow:
            raise SizewiseError(f"{name}: its {', '.join(lossy)} do not fit {_dname(self.dtype)} exactly: "
                                "export with --type fp32, or pass --allow-requantize")
        if lossy:
            self.requantized.append({"name": name, "from": f"{', '.join(lossy)} {_tname(tensors[lossy[0]])}",
                                     "to": _dname(self.dtype)})
        else:
            self.exact.append(name)
        return out


def _tname(t) -> str:
    return str(t.dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16").replace("float16", "fp16")


def _dname(dt) -> str:
    return {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}[np.dtype(dt)]


def linear_spec(mod, name: str, ledger: _Ledger, embed=None) -> LinearSpec:
    """One of the model's Linear-like modules -> how the graph computes it (onnx_graph's docstring)."""
    import torch.nn as nn

    from sizewise.compression import packed as P
    from sizewise.compression.token_table import TiedInt8Head

    bias = None if getattr(mod, "bias", None) is None else ledger.float_tensor(f"{name}.bias", mod.bias)
    n, k = mod.out_features, mod.in_features
    if isinstance(mod, TiedInt8Head):
        s = ledger.quant_params(f"{name}.weight (tied to {mod.tied_to})", {"scale": mod.weight_scale})
        return LinearSpec("int8", n, k, q=mod.weight.numpy(), scale=s["scale"], bias=bias,
                          share_int8_with_embedding=True)
    if isinstance(mod, (P.Int8DynamicLinear, P.Int8StaticLinear)):
        if not ledger.allow:
            raise SizewiseError(f"{name} is {mod.scheme} (activations quantized at run time), which ONNX Runtime's "
                                "MatMulNBits does not do: pass --allow-requantize to write it weight-only "
                                "(same int8 weights, float activations), or export an int8-wo checkpoint")
        if isinstance(mod, P.Int8StaticLinear) and mod.input_scale.numel() > 1:
            w = mod.dequantized_weight()
            ledger.requantized.append({"name": f"{name}.weight", "from": mod.scheme, "to": _dname(ledger.dtype)})
            ledger.notes.append(f"{name}: int8-static per-channel weights folded back to float")
            return LinearSpec("float", n, k, weight=_np(w, ledger.dtype)[0], bias=bias)
        ledger.notes.append(f"{name}: {mod.scheme} written weight-only (activations stay float)")
    if isinstance(mod, P.Int8WeightOnlyLinear):
        s = ledger.quant_params(f"{name}.weight", {"scale": mod.weight_scale})
        return LinearSpec("int8", n, k, q=mod.weight.numpy(), scale=s["scale"], bias=bias)
    if isinstance(mod, P.Int4FloatZeroLinear):
        p = ledger.quant_params(f"{name}.weight", {"scale": mod.weight_scale, "zero": mod.weight_zero})
        return LinearSpec("int4", n, k, q=mod.int_weight().numpy().astype(np.uint8), scale=p["scale"],
                          zero=p["zero"], group=mod.group_size, bias=bias)
    if isinstance(mod, P.Int4WeightOnlyLinear):
        p = ledger.quant_params(f"{name}.weight", {"scale": mod.weight_scale})
        return LinearSpec("int4", n, k, q=mod.int_weight().numpy().astype(np.uint8), scale=p["scale"],
                          zero_point=mod.weight_zero_point.numpy().astype(np.uint8), group=mod.group_size, bias=bias)
    if P.is_packed(mod):
        w = mod.dequantized_weight()
        ledger.notes.append(f"{name}: {mod.scheme} has no ONNX Runtime kernel: written as its dequantized "
                            f"weights, dense {_dname(ledger.dtype)}")
        return LinearSpec("float", n, k, weight=ledger.float_tensor(f"{name}.weight", w), bias=bias)
    if isinstance(mod, nn.Linear):
        if embed is not None and mod.weight is embed.weight:
            ledger.exact.append(f"{name}.weight (tied: the token table itself)")
            return LinearSpec("float", n, k, bias=bias, tied_table=True)
        return LinearSpec("float", n, k, weight=ledger.float_tensor(f"{name}.weight", mod.weight), bias=bias)
    raise SizewiseError(f"{name}: {type(mod).__name__} has no ONNX mapping")


def _rotary(model, max_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """HF's own cos/sin at positions 0..max_pos-1 (fp32, attention_scaling included) -> [max_pos, D/2] each."""
    import torch
    rot = model.model.rotary_emb
    kind = getattr(rot, "rope_type", "default")
    if kind not in ("default", "linear", "llama3", "yarn", "longrope") or kind == "longrope":
        raise SizewiseError(f"rotary scaling {kind!r} depends on the sequence length at run time: no ONNX mapping yet")
    pos = torch.arange(max_pos)[None]
    with torch.inference_mode():
        cos, sin = rot(torch.zeros(1, dtype=torch.float32), position_ids=pos)
    half = cos.shape[-1] // 2
    return cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy()


def llama_spec(model, dtype, allow_requantize: bool, gguf: Path | None = None) -> tuple[LlamaSpec, _Ledger]:
    """A loaded llama-family model (float or sizewise-packed) -> LlamaSpec + the exactness ledger.
    gguf: the file the model was loaded from, whose Q4_0/Q4_1/Q8_0 blocks replace the dequantized weights."""
    import torch.nn as nn

    from sizewise.compression.token_table import Int8Embedding

    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if mt not in ARCHITECTURES or not hasattr(getattr(model, "model", None), "layers"):
        raise SizewiseError(f"architecture {mt!r} ({type(model).__name__}) has no ONNX mapping: "
                            f"export supports {', '.join(ARCHITECTURES)}")
    act = getattr(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise SizewiseError(f"{mt} with hidden_act={act!r} has no ONNX mapping (silu only)")
    if mt == "qwen2" and getattr(cfg, "use_sliding_window", False):
        raise SizewiseError("qwen2 with use_sliding_window=true has no ONNX mapping (full attention only)")
    led = _Ledger(dtype, allow_requantize)
    over = gguf_specs(gguf, model, led) if gguf is not None else {}
    base = model.model
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    emb = base.embed_tokens
    embed, embed_int8 = None, None
    if "embed_int8" in over:
        embed_int8 = over["embed_int8"]
    elif isinstance(emb, Int8Embedding):
        s = led.quant_params("model.embed_tokens.weight", {"scale": emb.weight_scale})
        embed_int8 = (emb.weight.numpy(), s["scale"])
    elif isinstance(emb, nn.Embedding):
        embed = led.float_tensor("model.embed_tokens.weight", emb.weight)
    else:
        raise SizewiseError(f"model.embed_tokens: {type(emb).__name__} has no ONNX mapping")
    layers = []
    for i, blk in enumerate(base.layers):
        p = f"model.layers.{i}"
        a, m = blk.self_attn, blk.mlp
        if getattr(a, "q_norm", None) is not None:
            raise SizewiseError(f"{mt} with q/k norms has no ONNX mapping")
        layers.append({
            "ln1": led.float_tensor(f"{p}.input_layernorm.weight", blk.input_layernorm.weight),
            "ln2": led.float_tensor(f"{p}.post_attention_layernorm.weight", blk.post_attention_layernorm.weight),
            **{nm: over.get(f"{p}.self_attn.{nm}_proj") or linear_spec(getattr(a, f"{nm}_proj"), f"{p}.self_attn.{nm}_proj", led)
               for nm in "qkvo"},
            **{nm: over.get(f"{p}.mlp.{nm}_proj") or linear_spec(getattr(m, f"{nm}_proj"), f"{p}.mlp.{nm}_proj", led)
               for nm in ("gate", "up", "down")},
        })
    head = over.get("lm_head") or linear_spec(model.get_output_embeddings(), "lm_head", led,
                                               embed=emb if embed is not None else None)
    if head.share_int8_with_embedding and embed_int8 is None:
        raise SizewiseError("lm_head is tied to an int8 table that the embedding is not")
    eps = float(getattr(base.norm, "variance_epsilon", getattr(base.norm, "eps", 1e-6)))
    cos, sin = _rotary(model, int(getattr(cfg, "max_position_embeddings", 4096)))
    spec = LlamaSpec(n_layers=len(layers), hidden=cfg.hidden_size, n_heads=n_heads, n_kv=n_kv, head_dim=head_dim,
                     vocab=cfg.vocab_size, eps=eps, cos=cos, sin=sin, embed=embed, embed_int8=embed_int8,
                     layers=layers, norm=led.float_tensor("model.norm.weight", base.norm.weight), head=head)
    led.exact.append("rotary cos/sin tables (HF's own values, fp32)" if np.dtype(dtype) == np.float32
                     else "rotary cos/sin tables (HF's fp32 values cast to fp16, as HF casts them)")
    return spec, led


# --- a GGUF source: its own Q4_0 / Q4_1 / Q8_0 blocks, not the dequantized floats ---

GGUF_LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


def _unpermute(a: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (transformers' _reverse_permute_weights), on any per-row array."""
    dim = a.shape[0] // n_head // 2
    return a.reshape(n_head, dim, 2, *a.shape[1:]).swapaxes(2, 1).reshape(a.shape)


def gguf_blocks(t) -> tuple[str, dict] | None:
    """A GGUF tensor's own blocks -> (type, {q, d, m}) with rows = output features, or None if not Q4_0/Q4_1/Q8_0."""
    kind = t.tensor_type.name
    n = int(t.shape[1]) if len(t.shape) > 1 else 1
    k = int(t.shape[0])
    raw = np.asarray(t.data).reshape(n, -1)
    if kind in ("Q4_0", "Q4_1"):
        bsz = 18 if kind == "Q4_0" else 20
        b = raw.reshape(n, k // 32, bsz)
        d = b[..., 0:2].copy().view(np.float16)[..., 0]
        m = b[..., 2:4].copy().view(np.float16)[..., 0] if kind == "Q4_1" else None
        qs = b[..., bsz - 16:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(n, k)  # elements 0..15 low, 16..31 high nibbles
        return kind, {"q": q.astype(np.uint8), "d": d, "m": m}
    if kind == "Q8_0":
        b = raw.reshape(n, k // 32, 34)
        d = b[..., 0:2].copy().view(np.float16)[..., 0]
        q = b[..., 2:].copy().view(np.int8).reshape(n, k)
        return kind, {"q": q, "d": d, "m": None}
    return None


def _gguf_dequant(kind: str, p: dict) -> np.ndarray:
    """What gguf-py (and so transformers' loader) computes from the blocks, in fp32."""
    n, k = p["q"].shape
    d = p["d"].astype(np.float32)[..., None]
    q = p["q"].reshape(n, k // 32, 32).astype(np.float32)
    w = d * q + p["m"].astype(np.float32)[..., None] if kind == "Q4_1" else (
        d * (q - 8) if kind == "Q4_0" else d * q)
    return w.reshape(n, k)


def gguf_specs(path: Path, model, led: "_Ledger") -> dict:
    """{module name: LinearSpec} for the Linears stored as Q4_0/Q4_1/Q8_0 blocks, plus "embed_int8" for a
    Q8_0 token table. Each is checked against the weight transformers loaded from the same file (equal
    values), so the name mapping and llama.cpp's q/k permutation are verified, not assumed."""
    import torch
    from gguf import GGUFReader

    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    out: dict = {}
    for t in GGUFReader(str(path)).tensors:
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name, mod = "model.embed_tokens", model.model.embed_tokens
        elif t.name == "output.weight":
            name, mod = "lm_head", model.get_output_embeddings()
        elif len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_LINEARS:
            name = f"model.layers.{parts[1]}.{GGUF_LINEARS[parts[2]]}"
            mod = model.get_submodule(name)
        else:
            continue
        got = gguf_blocks(t)
        if got is None:
            continue  # F32/F16/K-quants: transformers' dequantized floats (exact in fp32) serve
        kind, p = got
        if len(parts) == 4 and parts[2] in ("attn_q", "attn_k"):
            h = n_heads if parts[2] == "attn_q" else n_kv
            p = {k: (None if v is None else _unpermute(v, h)) for k, v in p.items()}
        if not np.array_equal(_gguf_dequant(kind, p), mod.weight.detach().to(torch.float32).numpy()):
            raise SizewiseError(f"{path}: {t.name} does not dequantize to the weight transformers loaded for {name}: "
                                "this GGUF layout is not mapped")
        d = led.quant_params(f"{name}.weight ({t.name}, {kind} blocks)", {"d": torch.from_numpy(p["d"].astype(np.float32)),
                             "m": None if p["m"] is None else torch.from_numpy(p["m"].astype(np.float32))})
        n, k = p["q"].shape
        if name == "model.embed_tokens":
            if kind != "Q8_0":
                continue  # a Q4 table: gathered from transformers' floats
            out["embed_int8"] = (p["q"], d["d"])
            head = model.get_output_embeddings()
            if head is not None and head.weight is mod.weight:  # tied: the head reads the same Q8_0 codes
                out["lm_head"] = LinearSpec("int8", n, k, q=p["q"], scale=d["d"], group=32,
                                            share_int8_with_embedding=True)
            continue
        if kind == "Q8_0":
            spec = LinearSpec("int8", n, k, q=p["q"], scale=d["d"], group=32)
        else:
            spec = LinearSpec("int4", n, k, q=p["q"], scale=d["d"], group=32,
                              zero_point=np.zeros((n, k // 32), np.uint8) if kind == "Q4_1" else None, zero=d["m"])
        bias = getattr(mod, "bias", None)
        spec.bias = None if bias is None else led.float_tensor(f"{name}.bias", bias)
        out[name] = spec
    return out


# --- writing ---

def save_model(model_proto, d: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> list[str]:
    """model.onnx, with the initializers in model.onnx.data when they pass `external_data_bytes`."""
    import onnx
    weights = sum(len(t.raw_data) for t in model_proto.graph.initializer)
    if weights > external_data_bytes:
        onnx.save_model(model_proto, str(d / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
        return [MODEL_FILE, DATA_FILE]
    onnx.save_model(model_proto, str(d / MODEL_FILE))
    return [MODEL_FILE]


def genai_config(model, spec: LlamaSpec, tokenizer) -> dict:
    """onnxruntime-genai's genai_config.json for this decoder (separate past/present, no shared buffer)."""
    cfg = model.config
    eos = getattr(cfg, "eos_token_id", None)
    eos = eos if eos is not None else getattr(tokenizer, "eos_token_id", None)
    pad = getattr(cfg, "pad_token_id", None)
    pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
    ctx = int(getattr(cfg, "max_position_embeddings", 4096))
    return {
        "model": {
            "bos_token_id": getattr(cfg, "bos_token_id", None), "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE, "head_size": spec.head_dim, "hidden_size": spec.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": spec.n_heads, "num_hidden_layers": spec.n_layers,
                "num_key_value_heads": spec.n_kv,
            },
            "eos_token_id": eos, "pad_token_id": pad, "type": cfg.model_type, "vocab_size": spec.vocab,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": ctx, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


# --- running the export in onnxruntime ---

class OnnxDecoder:
    """Greedy decoding through the exported graph with its own KV cache (past in, present out).

    Same interface as sizewise.evaluate.generate's decoders: reset(), forward(ids [B, T]) -> logits."""

    def __init__(self, d: str | Path, threads: int | None = None, session=None) -> None:
        import onnxruntime as ort
        if session is None:
            so = ort.SessionOptions()
            if threads:
                so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            session = ort.InferenceSession(str(Path(d) / MODEL_FILE), so, providers=["CPUExecutionProvider"])
        self.sess = session
        pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
        self.past_names = [i.name for i in pasts]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.kv_heads, self.head_dim = int(pasts[0].shape[1]), int(pasts[0].shape[3])
        self.np_dtype = np.float16 if "float16" in pasts[0].type else np.float32
        self.reset()

    def reset(self, batch: int = 1) -> None:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), self.np_dtype)
        self.past = {n: empty for n in self.past_names}
        self.pos = 0

    def forward(self, ids, last_only: bool = True):
        import torch
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        b, t = ids.shape
        if self.pos and next(iter(self.past.values())).shape[0] != b:
            raise ValueError("batch changed mid-sequence: reset() first")
        if not self.pos:
            self.reset(b)
        feed = {"input_ids": ids, "attention_mask": np.ones((b, self.pos + t), np.int64),
                "position_ids": np.broadcast_to(np.arange(self.pos, self.pos + t, dtype=np.int64), (b, t)).copy(),
                **self.past}
        outs = self.sess.run(None, feed)
        names = [o.name for o in self.sess.get_outputs()]
        res = dict(zip(names, outs))
        self.past = {p: res[q] for p, q in zip(self.past_names, self.present_names)}
        self.pos += t
        logits = torch.from_numpy(res["logits"])
        return logits[:, -1] if last_only else logits


def greedy_tokens(decoder, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after `prompt`, through any decoder with reset()/forward()."""
    import torch
    decoder.reset()
    tok = decoder.forward(torch.tensor([prompt])).argmax(-1, keepdim=True)
    out = [int(tok)]
    for _ in range(n - 1):
        tok = decoder.forward(tok).argmax(-1, keepdim=True)
        out.append(int(tok))
    return out


def window_logits(decoder, ids: list[int]):
    """[L, V] fp32 logits for one window scored on its own (fresh cache)."""
    import torch
    decoder.reset()
    return decoder.forward(torch.tensor([ids]), last_only=False)[0].float()


def perplexity(decoder, tokens: list[int], window: int = 512) -> dict:
    """The protocol's perplexity (sizewise.evaluate.metrics.perplexity) through onnxruntime."""
    import math

    import torch.nn.functional as F
    import torch

    from sizewise.evaluate.data import windows
    total, n = 0.0, 0
    for w in windows(tokens, window):
        lg = window_logits(decoder, w)
        total += F.cross_entropy(lg[:-1], torch.tensor(w[1:]), reduction="sum").item()
        n += len(w) - 1
    return {"ppl": math.exp(total / n), "nll": total / n, "n_predicted": n}


def _verify(model, decoder, tokens: list[int], measure: bool, window: int = 512) -> dict:
    """Logits of the export against the source model on the protocol's tokens."""
    import torch

    from sizewise.evaluate.data import windows
    from sizewise.evaluate.metrics import kld_top1
    out = {"tokens": len(tokens)}
    kl, agree, n, maxdiff = 0.0, 0, 0, 0.0
    for w in windows(tokens, window):
        with torch.inference_mode():
            ref = model(input_ids=torch.tensor([w]), use_cache=False).logits[0].float()
        got = window_logits(decoder, w)
        k, a = kld_top1(ref[:-1], got[:-1])
        kl += float(k.sum())
        agree += int(a.sum())
        n += len(w) - 1
        maxdiff = max(maxdiff, float((ref - got).abs().max()))
    out.update(max_abs_logit_diff=maxdiff, top1=agree / n, kld=kl / n if measure else None)
    return out


# --- entry point ---

def _load(src: str):
    """load_model with damage reported as one line (HF and GGUF readers raise many types)."""
    from sizewise.io.model_load import load_model

    try:
        return load_model(src, "auto")
    except SizewiseError:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise SizewiseError(f"cannot read {src}: {msg} (is it corrupt or truncated?)") from None


def export(src: str, out: Path, *, type_: str | None = None, allow_requantize: bool = False, force: bool = False,
           measure_tokens: int = 2048, accuracy_level: int = 0, accuracy_int8: int = ACCURACY_INT8,
           threads: int | None = None,
           external_data_bytes: int = EXTERNAL_DATA_BYTES, gguf_codes: bool = True, loaded=None) -> dict:
    """Write the ONNX decoder for `src` into `out` (atomically) and return the report (module docstring).

    accuracy_level / accuracy_int8: MatMulNBits' attribute for bits=4 / bits=8 nodes (0: fp32 compute;
    4: int8 activations, lossy; bits=8 defaults to 4, see onnx_graph.ACCURACY_INT8).
    gguf_codes: for a .gguf source, carry its Q4_0/Q4_1/Q8_0 blocks (False: its dequantized floats).
    loaded: the LoadedModel of `src` if the caller has it already (tests, benchmarks); never modified."""
    from sizewise.compression.checkpoint import check_out_path
    from sizewise.evaluate.data import eval_tokens
    from sizewise.io.atomic import atomic_dir
    from sizewise.io.bundled import resolve_path

    type_ = type_ or "fp32"
    if type_ not in TYPES:
        raise SizewiseError(f"unknown --type {type_!r} for --to onnx: valid types are {', '.join(TYPES)}")
    out = Path(out)
    if out.exists() and not force:
        raise SizewiseError(f"{out} already exists: choose another --out or pass --force to replace it")
    src_path = resolve_path(src)
    if not src_path.exists():
        raise SizewiseError(f"model not found: {src_path} (give 'bundled', a .gguf file, an HF or sizewise directory)")
    check_out_path(out, src_path)
    dtype = np.float16 if type_ == "fp16" else np.float32
    lm = loaded if loaded is not None else _load(src)
    spec, led = llama_spec(lm.model, dtype, allow_requantize,
                           gguf=src_path if lm.kind == "gguf" and gguf_codes else None)
    proto = build(spec, dtype, accuracy_level=accuracy_level, accuracy_int8=accuracy_int8)
    del spec
    with atomic_dir(out, force=force) as tmp:
        files = save_model(proto, tmp, external_data_bytes)
        del proto
        lm.tokenizer.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").is_file():
            raise SizewiseError(f"{src}: its tokenizer has no tokenizer.json (a fast tokenizer): onnxruntime-genai needs one")
        gc = genai_config(lm.model, _spec_shape(lm.model), lm.tokenizer)
        (tmp / "genai_config.json").write_text(json.dumps(gc, indent=2) + "\n")
        dec = OnnxDecoder(tmp, threads=threads)
        n_check = max(measure_tokens, 2) if led.requantized and measure_tokens else CHECK_TOKENS
        toks = eval_tokens(lm.tokenizer, n_check)
        check = _verify(lm.model, dec, toks, measure=bool(led.requantized and measure_tokens))
        del dec
        file_bytes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        report = {
            "target": "onnx", "out": str(out), "type": type_,
            "bytes": sum(file_bytes.values()), "model_bytes": sum(file_bytes[f] for f in files),
            "files": file_bytes, "external_data": DATA_FILE in files,
            "source": {"path": str(src_path), "kind": lm.kind},
            "exact": led.exact, "requantized": led.requantized,
            "kld_vs_src": check["kld"], "check": check,
            "ops": _op_counts(tmp / MODEL_FILE),
            "notes": led.notes + [f"onnxruntime check on {check['tokens']} protocol tokens: max |logit diff| "
                                  f"{check['max_abs_logit_diff']:.2e}, top-1 agreement {check['top1']:.4f}"],
        }
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        report["bytes"] += (tmp / REPORT_FILE).stat().st_size
    return report


def _spec_shape(model):
    """The few config numbers genai_config needs (without keeping the weights' spec alive)."""
    cfg = model.config
    n_heads = cfg.num_attention_heads

    class S:  # noqa: D401 - a plain record
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        hidden = cfg.hidden_size
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        n_layers = cfg.num_hidden_layers
        vocab = cfg.vocab_size
    S.n_heads = n_heads
    return S


def _op_counts(path: Path) -> dict:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        key = f"{n.domain}.{n.op_type}" if n.domain else n.op_type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


__all__ = ["export", "TYPES", "OnnxDecoder", "greedy_tokens", "perplexity", "window_logits"]
