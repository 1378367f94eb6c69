"""Batched forward over paged KV for HF decoder-only models (llama / qwen2 / mistral family, DeepSeek MLA).

We walk the model's own submodules (embed_tokens, norms, rotary_emb, q/k/v/o projections,
mlp) so that swapped Linear layers (packed int8/int4 modules) just work; only the attention
core is ours, because it reads and writes the paged pool instead of a contiguous cache.

One code path serves prefill, recompute and decode: each sequence feeds its not-yet-cached
tokens (`tokens[cached:]`), their K/V (or MLA latent) are written to the sequence's slots,
then every query attends over its context gathered block by block (positions past
cached+n-1 and later-in-prompt positions are masked).
MLA caches the compressed latent (kv_lora_rank normed values + the rotated rope key) per
token and expands it with kv_b_proj at attention time (un-absorbed: simple and exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sizewise.compression.precision import stream_dtype
from sizewise.errors import SizewiseError
from sizewise.serve.kv_pool import KVLayout, KVPool


@dataclass
class StepInput:
    """One sequence in a forward batch: its id in the pool, the new tokens, and how many are cached already."""

    seq_id: int
    tokens: list[int]
    start: int  # position of tokens[0] == number of tokens already cached


def _decoder(model):
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        raise SizewiseError(f"cannot serve {type(model).__name__}: expected a decoder-only HF model with .model.layers and .lm_head")
    return inner


def is_mla(model) -> bool:
    attn = _decoder(model).layers[0].self_attn
    return hasattr(attn, "kv_a_proj_with_mqa") and hasattr(attn, "kv_b_proj")


def kv_layout(model, dtype: torch.dtype | None = None) -> KVLayout:
    """The per-token KV layout of a model, read from its config."""
    cfg = model.config
    dtype = dtype or stream_dtype(model)  # K/V cached in the stream dtype (fp32 around bf16-stored embeddings)
    n_layers = len(_decoder(model).layers)
    if is_mla(model):
        return KVLayout("mla", n_layers, dtype, latent_dim=cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return KVLayout("gqa", n_layers, dtype, num_kv_heads=kv_heads, head_dim=head_dim)


def max_context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, D]; cos/sin [B, L, D]."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _rope_interleave(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """DeepSeek's interleaved pairs (x0,x1),(x2,x3)... rotated by one frequency each, output de-interleaved."""
    cos = cos[..., : cos.shape[-1] // 2][:, None]
    sin = sin[..., : sin.shape[-1] // 2][:, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def split_by_context(rows: list[int], blocks: list[int], group_cost: int = 48) -> list[list[int]]:
    """Partition decode rows into groups of similar context so each group's gather and attention pad
    to its own longest context, not the batch's. Minimises sum(len(group) * max blocks) plus
    group_cost per group (a group's fixed per-layer op overhead, in row-blocks: about 48 on 2 cores
    for the bundled model, where one row-block of gather + attention is ~1.5 us per layer). O(n^2)."""
    order = sorted(range(len(rows)), key=lambda i: blocks[i])
    nb = [blocks[i] for i in order]
    best = [0] + [1 << 62] * len(order)  # best[j]: cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # last group = sorted rows i..j-1, padded to nb[j-1]
            c = best[i] + (j - i) * nb[j - 1] + group_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    parts, j = [], len(order)
    while j:
        parts.append([rows[k] for k in order[cut[j]:j]])
        j = cut[j]
    return parts[::-1]


class ModelRunner:
    """Runs batched steps of a model against a KVPool. Not thread-safe: one engine thread owns it."""

    def __init__(self, model, pool: KVPool):
        self.model = model.eval()
        self.pool = pool
        self.dec = _decoder(model)
        self.mla = is_mla(model)
        lay = kv_layout(model, pool.layout.dtype)
        if lay != pool.layout:
            raise SizewiseError(f"KV pool layout {pool.layout} does not match the model's {lay}")
        self.cfg = model.config
        self.fused_decode, self.fused_why = self._fused_decode_check()
        self._plans = None  # per layer: kernels/decode.LayerPlan, built on the first fused decode step
        self._stack = None  # decode.stack handles (every layer on the whole-layer kernel), built with _plans

    def _fused_decode_check(self) -> tuple[bool, str | None]:
        """Whether decode-only steps can take `_decode_fused` (kernels/decode.py), and why not."""
        from sizewise.kernels import decode

        if self.mla:
            return False, "MLA attention"
        why = decode.why_not(self.pool.layout.dtype,
                             [n for L in self.dec.layers for n in (L.input_layernorm, L.post_attention_layernorm)],
                             [L.self_attn for L in self.dec.layers], bool(getattr(self.cfg, "rope_interleave", False)))
        return why is None, why

    @torch.inference_mode()
    def forward(self, batch: list[StepInput]) -> torch.Tensor:
        """Write the new tokens' KV into the pool and return next-token logits [B, vocab] (fp32)."""
        n_new = [len(s.tokens) for s in batch]
        ctx = [s.start + n for s, n in zip(batch, n_new)]
        for s, c in zip(batch, ctx):
            self.pool.reserve(s.seq_id, c)
        if self.fused_decode and all(n == 1 for n in n_new):
            return self._decode_fused(batch, ctx)
        ids = torch.tensor([t for s in batch for t in s.tokens], dtype=torch.long)
        pos = torch.cat([torch.arange(s.start, s.start + n) for s, n in zip(batch, n_new)])
        write_slots = torch.tensor([sl for s, n in zip(batch, n_new) for sl in self.pool.slots(s.seq_id, s.start, s.start + n)],
                                   dtype=torch.long)
        # attention runs per group of similar query lengths, so decode rows are never padded to a prompt's length
        offsets = [0]
        for n in n_new:
            offsets.append(offsets[-1] + n)
        by_len: dict[int, list[int]] = {}
        for b, n in enumerate(n_new):
            by_len.setdefault(1 << (n - 1).bit_length(), []).append(b)
        bs = self.pool.block_size
        parts = [part for Lq, rows in by_len.items()
                 for part in (split_by_context(rows, [-(-ctx[b] // bs) for b in rows]) if Lq == 1 else [rows])]
        groups = [self._group(batch, rows, n_new, ctx, offsets) for rows in parts]
        g = _Grid(write_slots, groups)

        # Linear layers, norms and MLPs run on the packed tokens [1, T, hidden] (no padding at all);
        # only attention scatters queries into the padded [B, Lq] grid.
        h = self.dec.embed_tokens(ids[None])
        rot = self.dec.rotary_emb(h, pos[None])
        if isinstance(rot, torch.Tensor) and rot.is_complex():  # DeepSeek-V2: complex freqs_cis on interleaved pairs
            cos = torch.cat([rot.real, rot.real], dim=-1).to(h.dtype)
            sin = torch.cat([rot.imag, rot.imag], dim=-1).to(h.dtype)
            self._interleave = True
        else:
            cos, sin = rot
            self._interleave = bool(getattr(self.cfg, "rope_interleave", False))
        for li, layer in enumerate(self.dec.layers):
            r = h
            x = layer.input_layernorm(h)
            if self.mla:
                x = self._mla_attention(li, layer.self_attn, x, cos, sin, g)
            else:
                x = self._gqa_attention(li, layer.self_attn, x, cos, sin, g)
            h = r + x
            r = h
            h = r + layer.mlp(layer.post_attention_layernorm(h))
        last = torch.tensor(n_new).cumsum(0) - 1
        h = h[0, last]  # only each sequence's last token feeds the head
        h = self.dec.norm(h)
        return self.model.lm_head(h).float()

    def _decode_fused(self, batch: list[StepInput], ctx: list[int]) -> torch.Tensor:
        """One new token per row through kernels/decode.layer: about a dozen torch calls per layer instead of
        ~60 on the general path, attention read straight from the paged pool through each row's block table."""
        from sizewise.kernels import decode

        if self._plans is None:
            self._plans = [decode.LayerPlan.build(L.input_layernorm, L.post_attention_layernorm, L.self_attn.q_proj,
                                                  L.self_attn.k_proj, L.self_attn.v_proj, L.self_attn.o_proj,
                                                  L.mlp.gate_proj, L.mlp.up_proj, L.mlp.down_proj, L.mlp.act_fn,
                                                  L.self_attn.scaling) for L in self.dec.layers]
            self._stack = decode.stack(self._plans, self.pool.layout.head_dim)
        ids = torch.tensor([s.tokens[0] for s in batch], dtype=torch.long)
        pos = torch.tensor([s.start for s in batch], dtype=torch.long)
        slots = torch.tensor([self.pool.slots(s.seq_id, s.start, s.start + 1)[0] for s in batch], dtype=torch.long)
        tables = self.pool.block_tensor([s.seq_id for s in batch], ctx)
        ctx_t = torch.tensor(ctx, dtype=torch.long)
        h = self.dec.embed_tokens(ids[None])  # [1, B, hidden]
        cos, sin = self.dec.rotary_emb(h, pos[None])
        h = h[0]
        h = decode.run(self._plans, self._stack, h, self.pool.layout.head_dim, self.pool.k, self.pool.v, slots, tables,
                       ctx_t, cos[0], sin[0], self.pool.block_size)
        return self.model.lm_head(self.dec.norm(h)).float()

    @staticmethod
    def _attend(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        """q [b, Lq, H, D]; K [Hk, b, Lk, D], V [Hk, b, Lk, Dv] (the pool's head-major gather);
        mask [b, Lq, Lk] -> [b, Lq, H*Dv].

        The rep = H/Hk query heads sharing a KV head are stacked along the query axis (head h = kv*rep + r,
        as in transformers' repeat_kv), so K/V are never repeated or copied; softmax runs in at least fp32."""
        b, Lq, H, D = q.shape
        Hk, Lk = K.shape[0], K.shape[2]
        rep = H // Hk
        qg = q.view(b, Lq, Hk, rep, D).permute(2, 0, 3, 1, 4).reshape(Hk * b, rep * Lq, D)
        acc = torch.promote_types(q.dtype, torch.float32)
        s = torch.bmm(qg, K.reshape(Hk * b, Lk, D).transpose(1, 2)).to(acc).mul_(scale)  # [Hk*b, rep*Lq, Lk]
        s = s.view(Hk, b, rep, Lq, Lk).masked_fill_(~mask[None, :, None], float("-inf"))
        p = torch.softmax(s, dim=-1).to(V.dtype).view(Hk * b, rep * Lq, Lk)
        o = torch.bmm(p, V.reshape(Hk * b, Lk, -1))  # [Hk*b, rep*Lq, Dv]
        return o.view(Hk, b, rep, Lq, -1).permute(1, 3, 0, 2, 4).reshape(b, Lq, -1)

    def _group(self, batch, rows, n_new, ctx, offsets) -> "_Group":
        n = [n_new[b] for b in rows]
        c = [ctx[b] for b in rows]
        Lq = max(n)
        blocks = self.pool.block_tensor([batch[b].seq_id for b in rows], c)
        Lk = blocks.shape[1] * self.pool.block_size
        valid = torch.arange(Lq)[None, :] < torch.tensor(n)[:, None]  # [b, Lq]
        pos = torch.tensor([batch[b].start for b in rows])[:, None] + torch.arange(Lq)[None, :]
        limit = torch.minimum(pos, torch.tensor(c)[:, None] - 1)  # query i sees key j iff j <= its position, j < ctx
        mask = torch.arange(Lk)[None, None, :] <= limit[:, :, None]  # [b, Lq, Lk]
        tok = torch.cat([torch.arange(offsets[b], offsets[b] + n_new[b]) for b in rows])
        dense = bool(valid.all())  # every row full (all decode rows, or equal prompts): no scatter needed
        fresh = Lq > 1 and all(batch[b].start == 0 for b in rows)  # whole prompts, nothing cached before them
        spans = [(offsets[b], n_new[b]) for b in rows]
        return _Group(tok, valid, blocks, mask, dense, fresh, spans)

    def _attend_packed(self, q: torch.Tensor, kv_for, g: "_Grid", scale: float, new_kv=None) -> torch.Tensor:
        """q packed [T, H, D] -> attention output packed [T, H*Dv], one padded group at a time.

        new_kv = (k [Hk, T, D], v [Hk, T, Dv]) of the packed new tokens: whole fresh prompts then attend
        over their own keys with causal SDPA (skips the masked half, no gather, no padding)."""
        out = None
        for grp in g.groups:
            if grp.fresh and new_kv is not None:
                if out is None:
                    out = q.new_empty((q.shape[0], q.shape[1] * new_kv[1].shape[-1]))
                for o, n in grp.spans:
                    qr = q[o:o + n].transpose(0, 1)[None]  # [1, H, n, D]
                    kr, vr = new_kv[0][None, :, o:o + n], new_kv[1][None, :, o:o + n]
                    a = torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, is_causal=True, scale=scale,
                                                                         enable_gqa=True)
                    out[o:o + n] = a[0].transpose(0, 1).reshape(n, -1)
                continue
            b, Lq = grp.valid.shape
            if grp.dense:
                qg = q[grp.tok].view(b, Lq, *q.shape[1:])
            else:
                qg = q.new_zeros((b, Lq) + tuple(q.shape[1:]))
                qg[grp.valid] = q[grp.tok]
            K, V = kv_for(grp)
            o = self._attend(qg, K, V, grp.mask, scale)
            o = o.reshape(b * Lq, -1) if grp.dense else o[grp.valid]
            if len(g.groups) == 1 and grp.dense and bool((grp.tok == torch.arange(q.shape[0])).all()):
                return o
            if out is None:
                out = o.new_empty((q.shape[0], o.shape[-1]))
            out[grp.tok] = o
        return out

    def _gqa_attention(self, li, attn, x, cos, sin, g: "_Grid"):
        T = x.shape[1]
        hd = self.pool.layout.head_dim
        bs = self.pool.block_size
        q = attn.q_proj(x).view(1, T, -1, hd)
        k = attn.k_proj(x).view(1, T, -1, hd)
        v = attn.v_proj(x).view(T, -1, hd)
        if hasattr(attn, "q_norm"):  # qwen3-style per-head norms
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = _rope(q.transpose(1, 2), cos, sin)[0].transpose(0, 1)  # [T, H, D]
        k = _rope(k.transpose(1, 2), cos, sin)[0]  # [Hk, T, D]
        kc, vc = self.pool.k[li], self.pool.v[li]  # [Hk, slots, D]
        kc[:, g.write_slots] = k.to(kc.dtype)
        vc[:, g.write_slots] = v.transpose(0, 1).to(vc.dtype)
        Hk = kc.shape[0]

        def kv_for(grp):  # whole blocks of this group's context: [Hk, b, nb*bs, D], no copy after the gather
            b, nb = grp.blocks.shape
            flat = grp.blocks.reshape(-1)
            if "k" not in grp.bufs:  # one buffer per group, reused by every layer of this step (no page faults)
                grp.bufs["k"] = kc.new_empty(Hk, b * nb, bs * hd)
                grp.bufs["v"] = vc.new_empty(Hk, b * nb, bs * hd)
            K = torch.index_select(kc.view(Hk, -1, bs * hd), 1, flat, out=grp.bufs["k"]).view(Hk, b, nb * bs, hd)
            V = torch.index_select(vc.view(Hk, -1, bs * hd), 1, flat, out=grp.bufs["v"]).view(Hk, b, nb * bs, hd)
            return K.to(q.dtype), V.to(q.dtype)

        return attn.o_proj(self._attend_packed(q, kv_for, g, attn.scaling, (k, v.transpose(0, 1)))[None])

    def _mla_attention(self, li, attn, x, cos, sin, g: "_Grid"):
        T = x.shape[1]
        nope, rope_d, vd = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
        if attn.q_lora_rank is None:
            q = attn.q_proj(x)
        else:
            q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x)))
        q = q.view(1, T, -1, nope + rope_d).transpose(1, 2)  # [1, H, T, nope+rope]
        q_pass, q_rot = q.split([nope, rope_d], dim=-1)
        ckv = attn.kv_a_proj_with_mqa(x)
        c, k_rot = ckv.split([attn.kv_lora_rank, rope_d], dim=-1)
        c = attn.kv_a_layernorm(c)
        # interleaved pairs come out de-interleaved; q and k share the permutation, so q.k is unchanged
        rot = _rope_interleave if self._interleave else _rope
        q_rot, k_rot = rot(q_rot, cos, sin), rot(k_rot[:, None], cos, sin)
        lat = self.pool.latent[li]
        lat[g.write_slots] = torch.cat([c[0], k_rot[0, 0]], dim=-1).to(lat.dtype)  # the compressed latent per token

        bs = self.pool.block_size

        def kv_for(grp):  # expand this group's cached latents into per-head keys and values [H, b, Lk, *]
            b, nb = grp.blocks.shape
            Lk = nb * bs
            L = lat.view(-1, bs, lat.shape[-1]).index_select(0, grp.blocks.reshape(-1)).view(b, Lk, -1).to(x.dtype)
            c_all, kr_all = L.split([attn.kv_lora_rank, rope_d], dim=-1)
            kv = attn.kv_b_proj(c_all).view(b, Lk, -1, nope + vd).permute(2, 0, 1, 3)  # un-absorbed up-projection
            k_nope, V = kv.split([nope, vd], dim=-1)
            K = torch.cat([k_nope, kr_all[None].expand(k_nope.shape[0], -1, -1, -1)], dim=-1)
            return K, V.contiguous()

        Q = torch.cat([q_pass, q_rot], dim=-1)[0].transpose(0, 1)  # [T, H, nope+rope]
        return attn.o_proj(self._attend_packed(Q, kv_for, g, attn.scaling)[None])


@dataclass
class _Group:
    """Sequences of similar query length attended together in a padded [b, Lq] grid."""

    tok: torch.Tensor  # [t] indices of the group's tokens in the packed order
    valid: torch.Tensor  # [b, Lq] bool: which grid cells hold a real token
    blocks: torch.Tensor  # [b, nb] block ids of each row's context (padded with block 0)
    mask: torch.Tensor  # [b, Lq, Lk] bool, Lk = nb * block_size
    dense: bool  # every grid cell is a real token (then tok is row-major over the grid)
    fresh: bool  # whole prompts with nothing cached: causal SDPA over their own new K/V
    spans: list[tuple[int, int]]  # (offset, length) of each row's tokens in the packed order
    bufs: dict = field(default_factory=dict)  # gather buffers shared by the step's layers


@dataclass
class _Grid:
    write_slots: torch.Tensor  # [T] where each packed token's K/V (or latent) goes
    groups: list[_Group]
