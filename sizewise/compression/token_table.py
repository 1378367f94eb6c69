"""An int8 token table: the input embedding, and the lm_head tied to it, stored as int8 rows with one
bf16 scale per row (the `embed: int8` field of int4 recipes).

Why: on a small model the token table is a large share of the file and, through a tied head, of every
decode step's bytes. SmolLM2-135M: 28.3 M of 134.5 M parameters, 56.6 MB in bf16, about half of what
an int4-g64 decode step reads; llama.cpp's Q4_1 file keeps it Q8_0. A lookup dequantizes only the rows
it reads; the head runs `aten._weight_int8pack_mm` on the same int8 tensor, stored once.

Not the issue's default policy (embeddings and lm_head kept): a recipe opts in, and the manifest says so.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sizewise import kernels
from sizewise.compression import packed as P
from sizewise.compression import quant as Q


class Int8Embedding(P.PackedLinear):
    """Token table [V, H] as int8 rows + bf16 row scales; forward(ids) -> [.., H] in `out_dtype`."""

    scheme = "int8-embed"
    kernel = "int8 row gather + scale"
    weight_keys = ("weight", "weight_scale")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None,
                 out_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__(q.shape[1], q.shape[0], None)
        self.num_embeddings, self.embedding_dim, self.padding_idx = q.shape[0], q.shape[1], padding_idx
        self.register_buffer("weight", P.aligned(q))  # a tied head runs the int8 kernel on it
        self.register_buffer("weight_scale", scale.to(Q.SCALE_DTYPE).reshape(-1))
        self.out_dtype = out_dtype

    @classmethod
    def from_float(cls, emb: nn.Embedding, out_dtype: torch.dtype = torch.bfloat16, **options) -> "Int8Embedding":
        q, s = Q.quantize_per_channel_int8(emb.weight.detach())
        return cls(q, s, emb.padding_idx, out_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight).to(self.out_dtype)
        return rows * self.weight_scale[ids].to(self.out_dtype)[..., None]

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "weight_scale": self.weight_scale}

    def packed_meta(self) -> dict:
        return {**super().packed_meta(), "padding_idx": self.padding_idx,
                "out_dtype": str(self.out_dtype).replace("torch.", "")}

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        return cls(tensors["weight"], tensors["weight_scale"], meta.get("padding_idx"),
                   getattr(torch, meta.get("out_dtype", "bfloat16")))

    def dequantized_weight(self) -> torch.Tensor:
        return Q.dequantize_per_channel_int8(self.weight, self.weight_scale)


class TiedInt8Head(P.Int8WeightOnlyLinear):
    """The lm_head of a tied model: the embedding's int8 rows and scales, not a copy. It stores nothing of
    its own; `tie_to` (at quantization and after loading) binds it to the table named by `tied_to`."""

    scheme = "int8-wo-tied"

    def __init__(self, emb: Int8Embedding | None, tied_to: str, bias: torch.Tensor | None = None,
                 shape: tuple[int, int] | None = None) -> None:
        n, k = shape if emb is None else tuple(emb.weight.shape)
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.act_dtype = k, n, torch.bfloat16
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.tied_to = tied_to
        self.register_buffer("weight", torch.empty(0, dtype=torch.int8), persistent=False)
        self.register_buffer("weight_scale", torch.empty(0, dtype=Q.SCALE_DTYPE), persistent=False)
        if emb is not None:
            self.tie_to(emb)

    def tie_to(self, emb: Int8Embedding) -> None:
        if tuple(emb.weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"cannot tie a [{self.out_features}, {self.in_features}] head to a table of "
                             f"shape {list(emb.weight.shape)}")
        self.weight, self.weight_scale = emb.weight, emb.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = kernels.for_rows(x)
        if ops is not None:
            # decode batches: sizewise's kernel, exact fp32 sums of the int8 rows times their scales
            y = ops.linear(x.reshape(-1, x.shape[-1]).float(), kernels.I8, self.weight, self.weight_scale, 32, self.bias)
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return super().forward(x)

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def packed_meta(self) -> dict:
        return {**super().packed_meta(), "tied_to": self.tied_to}

    @classmethod
    def from_packed(cls, tensors, meta, bias):
        return cls(None, meta["tied_to"], bias, (int(meta["out_features"]), int(meta["in_features"])))


def quantize_token_table(model: nn.Module) -> dict[str, nn.Module]:
    """Replace the input embedding (and lm_head: tied -> TiedInt8Head, untied -> int8-wo) in place;
    returns {name: new module}. Lookups hand on the table's old float dtype, so the rest of the model
    computes in the precision it did before (`set_activation_dtype` changes it with the rest)."""
    from sizewise.compression.apply import set_module

    emb_name, head_name, tied = table_names(model)
    emb = model.get_submodule(emb_name)
    new_emb = Int8Embedding.from_float(emb, emb.weight.dtype)
    out: dict[str, nn.Module] = {emb_name: new_emb}
    set_module(model, emb_name, new_emb)
    if head_name is not None:
        head = model.get_submodule(head_name)
        new_head = (TiedInt8Head(new_emb, emb_name, head.bias) if tied
                    else P.Int8WeightOnlyLinear.from_float(head))
        out[head_name] = new_head
        set_module(model, head_name, new_head)
    return out


def table_names(model: nn.Module) -> tuple[str, str | None, bool]:
    """-> (input embedding's module name, a plain Linear lm_head's name or None, tied). Works on a
    meta-device skeleton too (the streaming path), where the config says whether they are tied."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(emb) is not nn.Embedding:
        raise ValueError(f"embed: int8 needs a plain nn.Embedding input table, found {type(emb).__name__}")
    names = {id(m): n for n, m in model.named_modules()}
    head_name = names[id(head)] if head is not None and type(head) is nn.Linear else None
    if head_name is None:
        return names[id(emb)], None, False
    if head.weight.device.type == "meta":  # a skeleton: not tied yet, and every meta data_ptr is 0
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    else:
        tied = head.weight.data_ptr() == emb.weight.data_ptr()
    return names[id(emb)], head_name, tied


def retie(model: nn.Module) -> None:
    """After loading: bind every TiedInt8Head to the table it names."""
    for m in model.modules():
        if isinstance(m, TiedInt8Head):
            m.tie_to(model.get_submodule(m.tied_to))


P.register_scheme("int8-embed", Int8Embedding)
P.register_scheme("int8-wo-tied", TiedInt8Head)
