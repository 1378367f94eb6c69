"""`compress --prune ...` and `sizewise share`: wiring between the CLI and sizewise.compression.

apply_prune_options prunes in place (one-shot or progressive with recovery), then packs every
pruned Linear into a SparseLinear whose value format follows the recipe (fp16 by default, int8
for int8-wo, int4-gN for int4-gN; SparseGPT quantizes jointly when the recipe is int4). The
packed modules are not nn.Linear, so the compress command's recipe pass leaves them alone.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sizewise.errors import SizewiseError

# recipes that make sense after pruning -> (value format, int4 group size)
_PLAIN = ("fp32", "fp16", "bf16")


def value_format_for_recipe(recipe: str | None) -> tuple[str, int]:
    """Which packed value format a --recipe implies for the pruned tensors."""
    if recipe in (None, "", *_PLAIN):
        return "fp16", 0
    if recipe == "int8-wo":
        return "int8", 0
    m = re.fullmatch(r"int4-g(\d+)", recipe)
    if m and int(m.group(1)) in (32, 64, 128, 256):
        return "int4", int(m.group(1))
    raise SizewiseError(f"--prune cannot be combined with --recipe {recipe}: pruned weights are stored as fp16, "
                        "int8 (int8-wo) or int4 (int4-g32/g64/g128) values; SparseGPT does the joint int4 itself")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _train_tokens(tokenizer, opts: dict, n: int, seq: int) -> torch.Tensor:
    from sizewise.evaluate.data import calib_tokens, corpus_text
    files = opts.get("train_file") or opts.get("text")
    if isinstance(files, (str, Path)):
        files = [files]
    text = corpus_text(files) if files else None
    if files:  # a user's training file is used whole: no evaluation region to skip
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < seq:
            raise SizewiseError(f"--train-file has {len(ids)} tokens, fewer than one {seq}-token sequence: give more text")
        k = min(n, len(ids) // seq)
        return torch.tensor(ids[:k * seq], dtype=torch.long).view(k, seq)
    from sizewise.evaluate.data import EVAL_RESERVED, corpus_tokens
    avail = (len(corpus_tokens(tokenizer, text)) - EVAL_RESERVED) // seq
    return calib_tokens(tokenizer, max(1, min(n, avail)), seq, text)  # recovery cycles if it wants more


def pack_pruned(model: nn.Module, masks: dict[str, torch.Tensor], pattern, values_format: str = "fp16",
                group_size: int = 128, quant: dict | None = None) -> dict[str, str]:
    """Replace each pruned Linear with its packed SparseLinear; returns name -> scheme."""
    from sizewise.compression.apply import set_module
    from sizewise.compression.sparse import SparseLinear

    from sizewise.compression.sparse import int4_group_for

    mods = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        lin = mods[name]
        q = (quant or {}).get(name) if values_format == "int4" else None
        g = int4_group_for(lin.in_features, group_size or 128) if values_format == "int4" else (group_size or 128)
        new = SparseLinear.from_float(lin, mask, values_format, pattern.n, pattern.m, g, quant=q)
        set_module(model, name, new)
        out[name] = new.scheme
    return out


def validate_prune_options(opts: dict[str, Any]) -> None:
    """Every check that needs no model: call before loading one, so bad input fails in a second."""
    from sizewise.compression.prune import METHODS, parse_pattern

    method = opts.get("prune")
    if not method:
        raise SizewiseError("--sparsity / --schedule need --prune magnitude|wanda|sparsegpt")
    if method not in METHODS:
        raise SizewiseError(f"unknown --prune {method!r}: use one of {', '.join(METHODS)}")
    if opts.get("sparsity") is None:
        raise SizewiseError("--prune needs --sparsity, e.g. --sparsity 0.5 or --sparsity 2:4")
    pattern = parse_pattern(opts["sparsity"])
    schedule = opts.get("schedule") or "oneshot"
    if schedule not in ("oneshot", "progressive"):
        raise SizewiseError(f"unknown --schedule {schedule!r}: use oneshot or progressive")
    if schedule == "progressive" and pattern.is_nm:
        raise SizewiseError("the progressive schedule raises an unstructured sparsity step by step; "
                            "for N:M use the one-shot mode (drop --schedule progressive)")
    if opts.get("steps") is not None and int(opts["steps"]) < 0:
        raise SizewiseError(f"--steps {opts['steps']}: give a number of recovery steps >= 0")
    tf = opts.get("train_file")
    if tf and not Path(tf).is_file():
        raise SizewiseError(f"--train-file not found: {tf}")
    value_format_for_recipe(opts.get("recipe"))


def apply_prune_options(model: nn.Module, tokenizer, opts: dict[str, Any]) -> nn.Module:
    """Prune `model` as `sizewise compress --prune ...` asks; returns it with packed sparse modules.

    opts: prune (magnitude|wanda|sparsegpt), sparsity ('0.5'|'2:4'|'4:8'), schedule (oneshot|progressive),
    steps (recovery optimizer steps: per schedule level for progressive, default 20; after pruning for
    oneshot, default 0), step (sparsity increment, 0.1),
    train_file (text for recovery; default: corpus tokens after 16384), recipe (sets the value format),
    kd (0..1 distillation weight), calib_samples (16), calib_seq_len (256), seq_len (256 for recovery).
    Records what it did on `model.sizewise_prune` (a JSON-able dict for the manifest's recipe).
    """
    from sizewise.compression.prune import (check_pattern_fits, mask_sparsity, parse_pattern, prunable_linears,
                                            prune_model)

    validate_prune_options(opts)
    method = opts["prune"]
    pattern = parse_pattern(opts["sparsity"])
    schedule = opts.get("schedule") or "oneshot"
    vf, group = value_format_for_recipe(opts.get("recipe"))
    targets = prunable_linears(model)
    for n, lin in targets.items():
        check_pattern_fits(pattern, lin.in_features, n)
        if vf == "int4":
            from sizewise.compression.sparse import int4_group_for
            try:
                int4_group_for(lin.in_features, group)
            except ValueError:
                raise SizewiseError(f"no int4 group size (g{group}, g64, g32) divides {n}'s input dimension "
                                    f"{lin.in_features}: use int8-wo or fp16 values") from None
    # recovery steps: per level for progressive (default 20); after pruning for one-shot (default 0)
    steps = int(opts["steps"]) if opts.get("steps") is not None else (20 if schedule == "progressive" else 0)
    calib = None
    if method != "magnitude":
        calib = _train_tokens(tokenizer, {}, int(opts.get("calib_samples", 16)), int(opts.get("calib_seq_len", 256)))
    # joint int4 only when no fine-tuning follows (it would move kept weights off the int4 grid)
    joint = vf == "int4" and method == "sparsegpt" and schedule == "oneshot" and steps == 0
    record: dict[str, Any] = {"method": method, "sparsity": str(pattern), "schedule": schedule,
                              "values_format": vf, "group_size": group or None, "joint_int4": joint,
                              "targets": len(targets)}
    model.eval()
    kd = float(opts.get("kd") or 0.0)
    if not 0.0 <= kd <= 1.0:
        raise SizewiseError(f"--kd {kd}: the distillation weight is a fraction in [0, 1]")
    teacher = None
    if kd > 0 and steps:
        import copy
        teacher = copy.deepcopy(model).eval()  # the dense parent, before any pruning
    with _progress() as prog:
        task = prog.add_task(f"{method} {pattern}", total=None)

        def progress(desc_or_done, a=None, b=None):
            if b is None:  # (done, total) from layer-wise pruning
                prog.update(task, completed=desc_or_done, total=a)
            else:
                prog.update(task, description=desc_or_done, completed=a, total=b)

        if schedule == "oneshot":
            masks = prune_model(model, method, pattern, calib, targets=targets, progress=progress,
                                quant_bits=4 if joint else 0, quant_group=group or 128)
            if steps:
                from sizewise.compression.recovery import RecoveryConfig, recover
                seq = int(opts.get("seq_len", 256))
                train = _train_tokens(tokenizer, opts, steps, seq)
                losses = recover(model, masks, train, RecoveryConfig(steps=steps, kd_weight=kd),
                                 teacher=teacher, on_step=lambda d, _l: progress("recover", d, steps))
                record["recovery"] = {"steps": steps, "seq_len": seq, "loss_first": losses[0], "loss_last": losses[-1]}
        else:
            from sizewise.compression.recovery import RecoveryConfig
            from sizewise.compression.schedule import progressive_prune
            seq = int(opts.get("seq_len", 256))
            from sizewise.compression.schedule import levels
            n_levels = len(levels(pattern.sparsity, float(opts.get("step", 0.1))))
            train = _train_tokens(tokenizer, opts, max(steps * n_levels, 1), seq)  # fresh text at every level
            res = progressive_prune(model, method, pattern, calib, train, step=float(opts.get("step", 0.1)),
                                    recovery=RecoveryConfig(steps=steps, kd_weight=kd), teacher=teacher,
                                    progress=progress, targets=targets)
            masks = res.masks
            record["log"] = [vars(r) for r in res.log]
            record["recovery"] = {"steps_per_level": steps, "seq_len": seq, "kd_weight": kd,
                                  "train_tokens": "from --train-file" if opts.get("train_file") else
                                  "corpus tokens after 16384 (evaluation = first 8192)"}
    quant = getattr(model, "_sizewise_sparse_quant", None) if joint else None
    record["measured_sparsity"] = mask_sparsity(masks)
    record["schemes"] = sorted(set(pack_pruned(model, masks, pattern, vf, group, quant).values()))
    # which int4 group each layer got (g128 falls back to g64 where 128 does not divide the input dim)
    if hasattr(model, "_sizewise_sparse_quant"):
        del model._sizewise_sparse_quant
    model.sizewise_prune = record
    return model


# ---------------------------------------------------------------- sizewise share

def share_command(model: str, out: str, group_size: int = 2, projections: str = "mlp",
                  steps: int = 0, train_file: str | None = None, force: bool = False,
                  json_out: bool = False, eval_tokens: int = 8192) -> dict:
    """Share adjacent layers' weights (W_i = W_base * M_i), fine-tune the bases, save, report bytes and quality."""
    import json

    from rich.console import Console
    from rich.table import Table

    from sizewise.compression.checkpoint import check_out_path, disk_bytes, save_compressed
    from sizewise.compression.recovery import RecoveryConfig, recover
    from sizewise.compression.share import (apply_sharing, round_bases_fp16, share_bytes, share_groups,
                                            shared_params)
    from sizewise.io.model_load import load_model

    projs = {"mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
             "attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")}
    projs["all"] = projs["mlp"] + projs["attn"]
    if projections not in projs:
        raise SizewiseError(f"unknown --projections {projections!r}: use mlp, attn or all")
    if steps < 0:
        raise SizewiseError(f"--steps {steps}: give a number of fine-tuning steps >= 0")
    if group_size < 2:
        raise SizewiseError(f"--group-size {group_size}: sharing needs at least 2 layers per group")
    from sizewise.io.atomic import recover
    recover(out)  # a killed earlier run's temps; its old --out put back if it was moved aside
    if Path(out).exists() and not force:
        raise SizewiseError(f"{out} already exists: choose another output path or pass --force to replace it")
    lm = load_model(model)
    check_out_path(out, lm.source)
    m = lm.model
    groups = share_groups(m, group_size, projs[projections])
    ref = None
    if eval_tokens:
        from sizewise.evaluate.data import eval_tokens as _eval_tokens
        from sizewise.evaluate.metrics import build_reference
        with _progress() as prog:
            task = prog.add_task("dense reference", total=None)
            ref = build_reference(m, _eval_tokens(lm.tokenizer, eval_tokens),
                                  progress=lambda d, t: prog.update(task, completed=d, total=t))
    errors = apply_sharing(m, groups)
    losses: list[float] = []
    if steps:
        train = _train_tokens(lm.tokenizer, {"train_file": train_file}, steps, 256)
        for p in shared_params(m):
            p.requires_grad_(True)
        with _progress() as prog:
            task = prog.add_task("fine-tune bases", total=steps)
            losses = recover(m, {}, train, RecoveryConfig(steps=steps, train="params"), params=shared_params(m),
                             on_step=lambda d, _l: prog.update(task, completed=d))
        round_bases_fp16(m)
    nb = share_bytes(m)
    quality = {}
    if ref is not None:
        from sizewise.evaluate.metrics import compare
        with _progress() as prog:
            task = prog.add_task("evaluate shared model", total=None)
            q = compare(m, ref, progress=lambda d, t: prog.update(task, completed=d, total=t))
        quality = {"ppl_dense": ref.quality.ppl, "ppl": q.ppl, "kld": q.kld, "top1": q.top1,
                   "top1_agreement": q.top1,  # deprecated alias of top1 (docs/vocabulary.md)
                   "eval_tokens": eval_tokens}
    record = {"method": "share", "group_size": group_size, "projections": list(projs[projections]),
              "groups": len(groups), "steps": steps, "losses": losses[:1] + losses[-1:],
              "mean_relative_l2_error": sum(errors.values()) / len(errors), **nb, "quality": quality}
    manifest = save_compressed(m, lm.tokenizer, out, {"share": record}, lm.source, force=force,
                               metrics={k: v for k, v in quality.items() if k in ("ppl", "kld", "top1_agreement")})
    record["bytes_on_disk"] = manifest.get("bytes_on_disk", disk_bytes(out))
    if json_out:
        print(json.dumps(record, indent=2))
    else:
        t = Table(title=f"parameter sharing -> {out}")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("groups", f"{len(groups)} x {group_size} layers ({projections})")
        t.add_row("shared tensors, packed", f"{nb['shared_packed_bytes']:,} B")
        t.add_row("same tensors, dense fp16", f"{nb['shared_dense_fp16_bytes']:,} B")
        t.add_row("ratio", f"{nb['ratio']:.4f}")
        t.add_row("mean relative L2 error", f"{record['mean_relative_l2_error']:.3f}")
        if quality:
            t.add_row("perplexity dense -> shared", f"{quality['ppl_dense']:.2f} -> {quality['ppl']:.2f}")
            t.add_row("KLD vs dense / top-1 agreement", f"{quality['kld']:.3f} / {quality['top1_agreement']:.3f}")
        t.add_row("checkpoint bytes", f"{record['bytes_on_disk']:,} B ({record['bytes_on_disk'] / 1e6:.1f} MB)")
        Console().print(t)
    return record
