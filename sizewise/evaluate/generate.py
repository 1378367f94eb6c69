"""A lean greedy decode loop with a static KV cache, for measuring decode speed honestly.

Once weights are small, decode at batch 1 is dominated by Python/eager overhead (HF's cache
objects, mask building, kwargs plumbing), so an HF `generate` number measures transformers,
not the weights. For Llama-family models (Llama, Mistral, Qwen2, DeepSeek dense 7B/67B: the
same block) this module runs the model's own modules (so packed quantized Linears run their
real kernels) through a nanoGPT/gpt-fast-shaped forward: preallocated KV cache, precomputed
rotary tables, fused `F.rms_norm` and SDPA. Other architectures fall back to HF with a
`DynamicCache`. Tests check the lean loop emits the same tokens as HF's forward.

One-token steps take kernels/decode.py where sizewise's CPU kernels are built and the model allows it
(fp32 stream, RMSNorm, no q/k norms): the serving runner's fused decode layer, with this cache seen as a
paged pool of one block per row. The cache is stored head-major, [kv_heads, batch * max_len, head_dim],
for that reason; `_kv` gives the [batch, kv_heads, max_len, head_dim] view the other paths use.
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
    norms: tuple = ()
    attn: torch.nn.Module | None = None


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class LeanDecoder:
    """Static-cache greedy decoding over a Llama-family HF model's modules."""

    def __init__(self, model, batch: int, max_len: int, fused: bool = True):
        """fused: one-token steps through kernels/decode.py where the model allows it (`fused_why` says why
        not); False keeps every step on this module's torch path (the tests compare the two)."""
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
                m.gate_proj, m.up_proj, m.down_proj, (blk.input_layernorm, blk.post_attention_layernorm), a))
        self.act = m.act_fn
        self.batch, self.max_len = batch, max_len
        shape = (self.n_kv, batch * max_len, self.head_dim)  # head-major: a paged pool of one block per row
        self.k_cache = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        pos = torch.arange(max_len)[None]
        with torch.inference_mode():
            cos, sin = base.rotary_emb(torch.zeros(1, dtype=self.dtype), position_ids=pos)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.pos = 0
        self._plans = None
        self._stack = None  # decode.stack handles when every layer takes the whole-layer kernel
        self.fused_why = "not asked for" if not fused else self._fused_check()

    def _fused_check(self) -> str | None:
        from sizewise.kernels import decode

        if not all(isinstance(L.attn, torch.nn.Module) for L in self.layers):
            return "attention modules not found"
        return decode.why_not(self.dtype, [n for L in self.layers for n in L.norms], [L.attn for L in self.layers],
                              bool(getattr(self.model.config, "rope_interleave", False)))

    def _kv(self, cache: torch.Tensor) -> torch.Tensor:
        """[batch, kv_heads, max_len, head_dim] view of a head-major cache tensor."""
        return cache.view(self.n_kv, self.batch, self.max_len, self.head_dim).transpose(0, 1)

    def _fused_step(self, ids: torch.Tensor) -> torch.Tensor:
        """One token per row through kernels/decode.layer; row b's positions are slots b*max_len + p."""
        from sizewise.kernels import decode

        if self._plans is None:
            self._plans = [decode.LayerPlan.build(*L.norms, L.q, L.k, L.v, L.o, L.gate, L.up, L.down, self.act,
                                                  getattr(L.attn, "scaling", self.head_dim ** -0.5))
                           for L in self.layers]
            self._stack = decode.stack(self._plans, self.head_dim)
        b = ids.shape[0]
        p = self.pos
        rows = torch.arange(b)
        slots, tables = rows * self.max_len + p, rows[:, None]
        ctx = torch.full((b,), p + 1, dtype=torch.long)
        cos, sin = self.cos[p:p + 1].expand(b, -1), self.sin[p:p + 1].expand(b, -1)
        h = self.embed(ids[:, 0]).to(self.dtype)
        h = decode.run(self._plans, self._stack, h, self.head_dim, self.k_cache, self.v_cache, slots, tables, ctx, cos,
                       sin, self.max_len)
        h = F.rms_norm(h, (h.shape[-1],), self.norm_w, self.norm_eps)
        return self.head(h)

    def reset(self) -> None:
        self.pos = 0  # stale cache entries past pos are never read

    # --- optional torch.compile path: one static-shape decode step (gpt-fast style) -------------
    def compile_step(self, mode: str | None = None) -> float:
        """Compile the single-token decode step (full-length cache + position mask, so every step
        has the same shapes and compiles once). Returns the compile + first-call seconds, which
        is part of the cost and must be reported beside any speedup."""
        import time

        self._arange = torch.arange(self.max_len)
        self.fused_why = "torch.compile asked for"
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
            kc, vc = self._kv(self.k_cache[i]), self._kv(self.v_cache[i])
            kc.index_copy_(2, pos_t, k)
            vc.index_copy_(2, pos_t, v)
            y = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask,
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
        kall, vall = self._kv(self.k_cache[i]), self._kv(self.v_cache[i])
        kall[:b, :, p:p + t] = k
        vall[:b, :, p:p + t] = v
        kc, vc = kall[:b, :, :p + t], vall[:b, :, :p + t]
        y = F.scaled_dot_product_attention(q, kc, vc, is_causal=t > 1, enable_gqa=self.n_kv != self.n_heads)
        return L.o(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """ids [B, T] at positions pos..pos+T-1 -> logits [B, V] (last) or [B, T, V]."""
        t = ids.shape[1]
        if self.pos + t > self.max_len:
            raise ValueError(f"cache holds {self.max_len} positions; asked for {self.pos + t}")
        if t == 1 and last_only and self.fused_why is None:  # (compile_step sets fused_why)
            out = self._fused_step(ids)
            self.pos += 1
            return out
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


def make_decoder(model, batch: int, max_len: int, lean: bool | None = None, fused: bool = True):
    """The lean static-cache loop where the architecture allows it (its one-token steps fused on sizewise's
    kernels where the model allows that), else HF's forward."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    ok = mt in LEAN_TYPES and hasattr(model, "model") and hasattr(model.model, "rotary_emb")
    if lean is None:
        lean = ok
    if lean and not ok:
        raise ValueError(f"the lean decode loop does not cover model_type={mt!r}")
    return LeanDecoder(model, batch, max_len, fused=fused) if lean else HFDecoder(model, batch, max_len)


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
