"""What every export target shares: finding SRC, refusing a bad --out, loading SRC as fp32 values, and
measuring an export's KL divergence against SRC on the protocol text.

Kept small and generic on purpose (gguf.py, compressed_tensors.py and onnx.py all use it).
"""
from __future__ import annotations

from pathlib import Path

from sizewise.errors import SizewiseError

MANIFEST = "sizewise.json"


def source_kind(src: str) -> tuple[Path, str]:
    """SRC ('bundled', a .gguf file, a sizewise dir, an HF dir) -> (path, "gguf" | "sizewise" | "hf")."""
    from sizewise.io.bundled import resolve_path

    path = resolve_path(src)
    if not path.exists():
        raise SizewiseError(f"source not found: {src} (give 'bundled', a .gguf file, an HF or sizewise directory)")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SizewiseError(f"{src} is not a .gguf file nor a model directory: give 'bundled', a .gguf file, "
                                "an HF or sizewise directory")
        return path, "gguf"
    if (path / MANIFEST).is_file():
        return path, "sizewise"
    if (path / "config.json").is_file():
        return path, "hf"
    raise SizewiseError(f"{src} has neither config.json nor {MANIFEST}: give an HF or sizewise model directory")


def check_out(out: Path, src_path: Path, force: bool) -> None:
    """--out must not exist (unless --force), must not be or contain the input."""
    out_r, src_r = Path(out).resolve(), Path(src_path).resolve()
    if out_r == src_r or src_r.is_relative_to(out_r):
        raise SizewiseError(f"--out {out} would overwrite the input {src_path}: choose a new output path")
    if Path(out).exists() and not force:
        raise SizewiseError(f"{out} already exists: choose another --out or pass --force to replace it")
    if Path(out).is_dir():
        raise SizewiseError(f"{out} is a directory: give a file name for --out")


def require_tokenizer(path: Path) -> None:
    """An HF or sizewise directory must carry its tokenizer (checked before any weights are read)."""
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        raise SizewiseError(f"{path} has no tokenizer (tokenizer.json or tokenizer.model): "
                            "save the tokenizer into the model directory first")


def fp32_state_dict(model) -> dict:
    """Every tensor a (partly packed) model stands for, as fp32 values under the HF names: packed
    modules contribute `<name>.weight` = their dequantized weight (and their bias); a head tied to the
    embedding's table contributes nothing (the model re-ties it)."""
    import torch

    from sizewise.compression.packed import is_packed

    out: dict[str, torch.Tensor] = {}
    packed = {n: m for n, m in model.named_modules() if is_packed(m) and hasattr(m, "dequantized_weight")}
    for name, m in packed.items():
        if getattr(m, "tied_to", None):
            continue
        out[f"{name}.weight"] = m.dequantized_weight().float()
        if getattr(m, "bias", None) is not None:
            out[f"{name}.bias"] = m.bias.detach().float()
    for key, t in model.state_dict().items():
        if any(key.startswith(n + ".") for n in packed):
            continue
        out[key] = t.detach().float()
    return out


def fp32_model(config, state: dict):
    """An fp32 transformers model from `config` holding `state` (fp32_state_dict's output)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = config.__class__.from_dict(config.to_dict())
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    res = model.load_state_dict(state, strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [k for k in res.missing_keys if not (getattr(cfg, "tie_word_embeddings", False) and "lm_head" in k)]
    if missing:
        raise SizewiseError(f"the source lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]}")
    return model.eval()


def kld(reference_model, candidate_model, tokenizer, n_tokens: int, window: int = 512) -> dict:
    """Protocol KLD(reference || candidate), top-1 agreement and both perplexities on the first
    `n_tokens` corpus tokens (pydoc topics, no BOS, windows of `window`)."""
    from sizewise.evaluate import data, machine, metrics

    machine.set_threads()
    toks = data.eval_tokens(tokenizer, n_tokens)
    ref = metrics.build_reference(reference_model, toks, min(window, n_tokens))
    q = metrics.compare(candidate_model, ref)
    return {"kld": q.kld, "kld_max": q.kld_max, "top1": q.top1, "ppl_source": ref.quality.ppl, "ppl_export": q.ppl,
            "tokens": n_tokens, "predicted": q.n_predicted, "window": ref.window}


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from a transformers-style model, the whole sequence re-run each step (no cache):
    the reference an engine's greedy continuation is compared with, free of any cache bug of ours."""
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids[len(prompt):]


def leading_agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens two continuations share (the issue's "agree for the first k tokens")."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def divergence(model, prompt: list[int], ref: list[int], other: list[int]) -> dict | None:
    """Where two greedy continuations part, how close the reference model was to a tie there.

    At the first step k where `ref` and `other` differ, the reference model (the full sequence re-run,
    no cache) scores prompt + ref[:k]; `margin` is its logit for ref[k] minus its logit for other[k]
    (>= 0: ref[k] was its argmax) and `margin_rel` that margin over the logits' spread (max - median).
    A margin below the two engines' measured logit difference means the split is a near-tie that
    either engine's rounding can flip, not a mapping error. None when the continuations agree."""
    import torch

    k = leading_agreement(ref, other)
    if k >= min(len(ref), len(other)):
        return None
    with torch.inference_mode():
        lg = model(input_ids=torch.tensor([list(prompt) + list(ref[:k])]), use_cache=False).logits[0, -1].float()
    margin = float(lg[ref[k]] - lg[other[k]])
    spread = float(lg.max() - lg.median())
    return {"step": k, "ref_token": int(ref[k]), "other_token": int(other[k]), "margin": margin,
            "margin_rel": margin / spread if spread > 0 else None,
            "other_rank": int((lg > lg[other[k]]).sum())}
