"""The float precision a weight-only recipe keeps around its int kernels (`stream` in the recipe).

The CPU int8/int4 kernels take bf16 activations and return bf16. The rest of the model (embedding
lookup, norms, residual adds, attention, logits) can run in bf16 as well (`stream="bf16"`), or in
fp32 with the kept weights still *stored* in bf16 (`stream="fp32"`, the default of int8 and int4
recipes: the file and the memory stay the same size, and compiled decode is faster: inductor's bf16
glue measured 1.38x slower on the 2-core AVX-512 CPU we test on). Two pieces make the fp32 stream exact where it matters:

- `StreamEmbedding` looks rows up in the stored bf16 table and hands fp32 on, so the rotary tables
  and every residual add that follows are fp32 (transformers derives cos/sin from the embedding's
  dtype).
- `RefinedLMHead` computes all logits with the bf16 weights at bf16 speed, then recomputes the top
  `k` in fp32 from the same stored rows. A bf16 logit carries 8 significant bits (steps of 0.125
  between 16 and 32), enough to swap near-tied candidates; k extra dot products of `hidden` length
  fix the ones that decide the next token and hold nearly all of the probability mass.

Measured on the bundled model (8,192 evaluation tokens, against its fp32 parent): int8-wo RTN top-1
agreement 96.38 % with a bf16 stream, 97.17 % with the fp32 stream and refined head; int8-gptq
96.75 % -> 97.71 %. The bf16 recipe itself reaches 97.16 %: bf16 logits were the floor.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from sizewise import kernels
from sizewise.compression.packed import is_packed

STREAMS = {"bf16": torch.bfloat16, "fp32": torch.float32}
REFINE_TOP_K = 32
_EMPTY = torch.empty(0)


class StreamEmbedding(nn.Embedding):
    """An nn.Embedding whose table is stored in one dtype and whose output is another."""

    keeps_storage_dtype = True

    def __init__(self, weight: nn.Parameter, out_dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__(weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight, _freeze=True)
        self.out_dtype = out_dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.out_dtype)


class RefinedLMHead(nn.Linear):
    """Logits from bf16-stored weights: bf16 matmul for all, fp32 recompute for the top k (see module doc)."""

    keeps_storage_dtype = True

    def __init__(self, weight: nn.Parameter, bias: torch.Tensor | None = None, k: int = REFINE_TOP_K):
        nn.Module.__init__(self)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.k = min(k, weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        ops = kernels.for_rows(x)
        if ops is not None and w.dtype == torch.bfloat16:
            # decode batches: sizewise's bf16 kernel (bf16 products, fp32 sums, no bf16 rounding of the output)
            y = ops.linear(x.reshape(-1, x.shape[-1]), kernels.BF16, w, _EMPTY, 32).reshape(*x.shape[:-1], w.shape[0])
        else:
            y = F.linear(x.to(w.dtype), w).float()
        idx = y.topk(self.k, dim=-1).indices  # [..., k]
        exact = torch.einsum("...kd,...d->...k", w[idx].float(), x.float())
        y = y.scatter(-1, idx, exact)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, stored={self.weight.dtype}, fp32 top-{self.k}"


def _is_wrapped(m: nn.Module) -> bool:
    return getattr(m, "keeps_storage_dtype", False)


def set_activation_dtype(model, dtype) -> None:
    """Cast the float modules (embeddings, norms, kept Linears) to `dtype`, leaving packed modules
    and rotary frequency tables alone: hidden states then flow in `dtype` end to end."""
    packed_inside: set[int] = set()
    for m in model.modules():
        if is_packed(m):
            packed_inside.update(id(x) for x in m.modules())
    for m in model.modules():
        if is_packed(m) and hasattr(m, "out_dtype"):  # an int8 token table hands on the stream dtype
            m.out_dtype = dtype
        if id(m) in packed_inside or type(m).__module__.startswith("torch.ao") or _is_wrapped(m):
            continue
        for name, p in list(m.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in list(m.named_buffers(recurse=False)):
            if b.is_floating_point() and b.dtype != dtype and "inv_freq" not in name:
                setattr(m, name, b.to(dtype))
    if hasattr(model, "config"):
        model.config.dtype = str(dtype).replace("torch.", "")
    torch.set_default_dtype(torch.float32)


def apply_stream(model: nn.Module, stream: str, store: torch.dtype = torch.bfloat16) -> None:
    """Put the kept float modules on `stream`: with "fp32", norms and other float tensors become fp32 while
    the input embedding and lm_head stay stored in `store` behind the two wrappers; with "bf16", cast all."""
    dtype = STREAMS[stream]
    set_activation_dtype(model, dtype)
    if dtype == store:
        return
    _wrap(model, dtype, store)


def _wrap(model: nn.Module, stream: torch.dtype, store: torch.dtype) -> None:
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if is_packed(emb):  # an int8 token table hands on the stream dtype itself (out_dtype), and so does its head
        return
    tied = head is not None and head.weight is emb.weight
    if not _is_wrapped(emb):
        w = nn.Parameter(emb.weight.detach().to(store), requires_grad=False)
        model.set_input_embeddings(StreamEmbedding(w, stream, emb.padding_idx))
    emb = model.get_input_embeddings()
    if head is not None and not _is_wrapped(head):
        w = emb.weight if tied else nn.Parameter(head.weight.detach().to(store), requires_grad=False)
        model.set_output_embeddings(RefinedLMHead(w, head.bias))
    if hasattr(model, "config"):
        model.config.dtype = str(stream).replace("torch.", "")


def stream_dtype(model: nn.Module) -> torch.dtype:
    """The dtype hidden states flow in: an fp32 stream's embedding says so itself; otherwise the table's dtype
    (bf16 when the table is not float)."""
    emb = model.get_input_embeddings()
    out = getattr(emb, "out_dtype", None)
    if out is not None:
        return out
    return emb.weight.dtype if emb.weight.is_floating_point() else torch.bfloat16


def stored_dtype(name: str, dtype: torch.dtype, stream: str) -> torch.dtype:
    """The dtype a kept float tensor is written in under `stream`, by name (streamed checkpoints, where the
    modules are never built): the same choice `apply_stream` makes on a model."""
    if not dtype.is_floating_point:
        return dtype
    if stream != "fp32":  # a bf16 stream holds every kept float tensor in bf16 (set_activation_dtype)
        return torch.bfloat16
    return torch.bfloat16 if re.search(r"(embed_tokens|lm_head)\.weight$", name) else torch.float32


def restore_stream(model: nn.Module) -> str | None:
    """After loading a checkpoint: if the embedding is stored narrower than the final norm (an fp32 stream
    saved by `apply_stream`), put the wrappers back. Returns the stream found ("fp32") or None."""
    emb = model.get_input_embeddings()
    norm = getattr(getattr(model, "model", None), "norm", None)
    nw = getattr(norm, "weight", None)
    if emb is None or nw is None or not emb.weight.is_floating_point() or emb.weight.dtype == nw.dtype:
        return None
    if nw.dtype != torch.float32:
        return None
    _wrap(model, torch.float32, emb.weight.dtype)
    return "fp32"
