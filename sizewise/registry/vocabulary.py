"""One name per quantity across every verb's JSON (docs/vocabulary.md), and the old names as aliases.

Why here: the registry stores measurements under these names, so `compare`/`report` can put an
`eval` number next to a `share` or `export` number without a translation table of their own. The
verbs keep emitting the old keys for one release (`with_aliases`), so existing scripts keep working.
"""
from __future__ import annotations

from typing import Any

# canonical dotted name -> old names still emitted for one release (deprecated)
ALIASES: dict[str, tuple[str, ...]] = {
    "params.total": ("parameters",),          # inspect --json; eval/study's bare-int `params`
    "bytes_on_disk": ("file_bytes", "bytes"),  # inspect --json file_bytes; export report / study rows `bytes`
    "top1": ("top1_agreement",),              # share --json quality
    "kld": ("kld_vs_src",),                   # export report
}
CANONICAL: dict[str, str] = {old: new for new, olds in ALIASES.items() for old in olds}

# what each canonical name means (rendered into docs/vocabulary.md; `registry show` uses the units)
QUANTITIES: dict[str, tuple[str, str]] = {
    "params.total": ("count", "parameters stored (tied tensors once; MTP included where present)"),
    "params.activated": ("count", "parameters used per token (MoE: dense + shared + top-k routed + router)"),
    "bytes_on_disk": ("bytes", "bytes of the model's tensor files (safetensors/GGUF/ONNX) as stored"),
    "ppl": ("", "perplexity on the protocol text (no BOS, non-overlapping windows)"),
    "kld": ("nats/token", "mean KL divergence parent || model on the same tokens"),
    "top1": ("fraction", "positions where the model's argmax equals the parent's"),
    "tokens": ("count", "tokens the quality metrics were computed over"),
    "load_s": ("s", "wall seconds to load the model"),
    "prefill_tok_s": ("tok/s", "prefill throughput at the protocol's prompt length"),
    "decode_tok_s.b{N}": ("tok/s", "greedy decode throughput at batch N"),
    "peak_rss_bytes": ("bytes", "peak resident memory of the measuring process"),
    "sparsity": ("fraction", "fraction of pruned weights that are zero (measured on the masks)"),
    "seconds": ("s", "wall seconds the verb took"),
    "tokens_per_s.c{N}": ("tok/s", "bench-serve generated tokens per wall second at concurrency N"),
    "ab.requests": ("count", "serve --ab: requests routed to this variant"),
    "ab.errors": ("count", "serve --ab: this variant's 5xx answers and stream error events"),
    "ab.observed_share": ("fraction", "serve --ab: this variant's fraction of the split (unpinned) requests"),
    "ab.latency_p{50,95}_s": ("s", "serve --ab: request latency of this variant's ok requests"),
    "ab.ttft_p{50,95}_s": ("s", "serve --ab: time to first token of this variant's requests"),
    "ab.tokens_per_s": ("tok/s", "serve --ab: this variant's generated tokens per wall second of the split"),
    "ab.decode_tok_s": ("tok/s", "serve --ab: 1 / mean inter-token latency of this variant"),
}


def canonical(name: str) -> str:
    """The canonical name of a metric key (unknown keys pass through unchanged)."""
    return CANONICAL.get(name, name)


def params_block(total: int, **more: Any) -> dict:
    """`params` as every verb reports it: {"total": N, ...}."""
    return {"total": int(total), **more}


def with_aliases(d: dict, renames: dict[str, str]) -> dict:
    """Return `d` with each canonical key of `renames` (old -> canonical) present beside its old key.

    Old keys stay (one release) so scripts reading them keep working; new keys are what the docs
    and the registry use. Nested canonical names ('params.total') become nested dicts.
    """
    out = dict(d)
    for old, new in renames.items():
        if old not in d:
            continue
        head, _, tail = new.partition(".")
        if tail:
            block = out.get(head) if isinstance(out.get(head), dict) else {}
            out[head] = {**block, tail: d[old]}
        else:
            out.setdefault(new, d[old])
    return out
