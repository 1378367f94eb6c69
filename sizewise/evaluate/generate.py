"""A lean greedy decode loop with a static KV cache, for measuring decode speed honestly.

Once weights are small, decode at batch 1 is dominated by Python/eager overhead (HF's cache
objects, mask building, kwargs plumbing), so an HF `generate` number measures transformers,
not the weights. For Llama-family models (Llama, Mistral, Qwen2, DeepSeek dense 7B/67B: the
same block) this module runs the model's own modules (so packed quantized Linears run their
real kernels) through a nanoGPT/gpt-fast-shaped forward: preallocated KV cache, precomputed
rotary tables, fused `F.rms_norm` and SDPA. Other architectures fall back to HF with a
`DynamicCache`. Tests check the lean loop emits the same tokens as HF's forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from sizewise.compression.precision import stream_dtype

LEAN_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [T, D]. HF's rotate_half convention."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


@dataclass
class _Layer:
    ln1_w: torch.Tensor
    ln1_eps: float
    q: torch.nn.Module
    k: torch.nn.Module
    v: torch.nn.Module
    o: torch.nn.Module
    q_norm: torch.nn.Module | None
    k_norm: torch.nn.Module | None
    ln2_w: torch.Tensor
    ln2_eps: float
    gate: torch.nn.Module
    up: torch.nn.Module
    down: torch.nn.Module


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class LeanDecoder:
    """Static-cache greedy decoding over a Llama-family HF model's modules."""

    def __init__(self, model, batch: int, max_len: int):
        cfg = model.config
        self.model = model
        base = model.model
        self.embed = base.embed_tokens
        self.head = model.get_output_embeddings()
        self.norm_w, self.norm_eps = base.norm.weight, _eps(base.norm)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.dtype = stream_dtype(model)  # fp32 for an fp32 stream around bf16-stored embeddings
        self.layers = []
        for blk in base.layers:
            a, m = blk.self_attn, blk.mlp
            self.layers.append(_Layer(
                blk.input_layernorm.weight, _eps(blk.input_layernorm), a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                getattr(a, "q_norm", None), getattr(a, "k_norm", None),
                blk.post_attention_layernorm.weight, _eps(blk.post_attention_layernorm),
                m.gate_proj, m.up_proj, m.down_proj))
        self.act = m.act_fn
        self.batch, self.max_len = batch, max_len
        shape = (batch, self.n_kv, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        pos = torch.arange(max_len)[None]
        with torch.inference_mode():
            cos, sin = base.rotary_emb(torch.zeros(1, dtype=self.dtype), position_ids=pos)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0  # stale cache entries past pos are never read

    # --- optional torch.compile path: one static-shape decode step (gpt-fast style) -------------
    def compile_step(self, mode: str | None = None) -> float:
        """Compile the single-token decode step (full-length cache + position mask, so every step
        has the same shapes and compiles once). Returns the compile + first-call seconds, which
        is part of the cost and must be reported beside any speedup."""
        import time

        self._arange = torch.arange(self.max_len)
        # a fresh dynamo cache per decoder: every variant/batch re-traces the same code object, and past
        # the recompile limit dynamo silently runs it eagerly (seen as a 0.02 s "compile" of the third variant)
        torch._dynamo.reset()
        self._step_c = torch.compile(self._static_step, dynamic=False, fullgraph=False, mode=mode)
        t0 = time.perf_counter()
        saved = self.pos
        with torch.inference_mode():
            self._step_c(torch.zeros(self.batch, 1, dtype=torch.long), torch.tensor([0]))
        self.pos = saved
        return time.perf_counter() - t0

    def _static_step(self, ids: torch.Tensor, pos_t: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).to(self.dtype)
        hs = x.shape[-1]
        b = x.shape[0]
        cos, sin = self.cos.index_select(0, pos_t), self.sin.index_select(0, pos_t)
        mask = (self._arange <= pos_t).view(1, 1, 1, -1)
        for i, L in enumerate(self.layers):
            h = F.rms_norm(x, (hs,), L.ln1_w, L.ln1_eps)
            q = L.q(h).view(b, 1, self.n_heads, self.head_dim)
            k = L.k(h).view(b, 1, self.n_kv, self.head_dim)
            v = L.v(h).view(b, 1, self.n_kv, self.head_dim)
            if L.q_norm is not None:
                q, k = L.q_norm(q), L.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.k_cache[i].index_copy_(2, pos_t, k)
            self.v_cache[i].index_copy_(2, pos_t, v)
            y = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                               enable_gqa=self.n_kv != self.n_heads)
            x = x + L.o(y.transpose(1, 2).reshape(b, 1, self.n_heads * self.head_dim))
            h = F.rms_norm(x, (hs,), L.ln2_w, L.ln2_eps)
            x = x + L.down(self.act(L.gate(h)) * L.up(h))
        x = F.rms_norm(x, (hs,), self.norm_w, self.norm_eps)
        return self.head(x)[:, -1]

    def _attn(self, i: int, L: _Layer, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        p = self.pos
        q = L.q(x).view(b, t, self.n_heads, self.head_dim)
        k = L.k(x).view(b, t, self.n_kv, self.head_dim)
        v = L.v(x).view(b, t, self.n_kv, self.head_dim)
        if L.q_norm is not None:
            q, k = L.q_norm(q), L.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self.cos[p:p + t], self.sin[p:p + t]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        self.k_cache[i][:, :, p:p + t] = k
        self.v_cache[i][:, :, p:p + t] = v
        kc, vc = self.k_cache[i][:, :, :p + t], self.v_cache[i][:, :, :p + t]
        y = F.scaled_dot_product_attention(q, kc, vc, is_causal=t > 1, enable_gqa=self.n_kv != self.n_heads)
        return L.o(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """ids [B, T] at positions pos..pos+T-1 -> logits [B, V] (last) or [B, T, V]."""
        t = ids.shape[1]
        if self.pos + t > self.max_len:
            raise ValueError(f"cache holds {self.max_len} positions; asked for {self.pos + t}")
        if t == 1 and last_only and getattr(self, "_step_c", None) is not None:
            out = self._step_c(ids, torch.tensor([self.pos]))
            self.pos += 1
            return out
        x = self.embed(ids).to(self.dtype)
        hs = x.shape[-1]
        for i, L in enumerate(self.layers):
            x = x + self._attn(i, L, F.rms_norm(x, (hs,), L.ln1_w, L.ln1_eps))
            h = F.rms_norm(x, (hs,), L.ln2_w, L.ln2_eps)
            x = x + L.down(self.act(L.gate(h)) * L.up(h))
        self.pos += t
        if last_only:
            x = x[:, -1:]
        x = F.rms_norm(x, (hs,), self.norm_w, self.norm_eps)
        logits = self.head(x)
        return logits[:, -1] if last_only else logits


class HFDecoder:
    """Fallback for architectures the lean loop does not cover: HF forward with a DynamicCache."""

    def __init__(self, model, batch: int, max_len: int):
        self.model, self.batch, self.max_len = model, batch, max_len
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache
        self.cache = DynamicCache()
        self.pos = 0

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        t = ids.shape[1]
        pos = torch.arange(self.pos, self.pos + t)[None].expand(ids.shape[0], -1)
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, position_ids=pos)
        self.pos += t
        return out.logits[:, -1].float() if last_only else out.logits.float()


def make_decoder(model, batch: int, max_len: int, lean: bool | None = None):
    """The lean static-cache loop where the architecture allows it, else HF's forward."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    ok = mt in LEAN_TYPES and hasattr(model, "model") and hasattr(model.model, "rotary_emb")
    if lean is None:
        lean = ok
    if lean and not ok:
        raise ValueError(f"the lean decode loop does not cover model_type={mt!r}")
    return (LeanDecoder if lean else HFDecoder)(model, batch, max_len)


def greedy(decoder, prompt: torch.Tensor, n_new: int,
           on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Prefill `prompt` [B, T], then emit `n_new` greedy tokens per row -> [B, n_new]."""
    decoder.reset()
    tok = decoder.forward(prompt).argmax(dim=-1, keepdim=True)
    out = [tok]
    for s in range(n_new - 1):
        tok = decoder.forward(tok).argmax(dim=-1, keepdim=True)
        out.append(tok)
        if on_step:
            on_step(s)
    return torch.cat(out, dim=1)
