"""`sizewise study MODEL [--quick] [--recipes a,b,c] [--out DIR]`: the measured recipe grid."""
from __future__ import annotations

from pathlib import Path

from sizewise.errors import SizewiseError


def study_command(model: str, quick: bool = False, recipes: str | None = None, out: str | None = None,
                  text: list[str] | None = None, tokens: int | None = None, keep: bool = False,
                  json_out: bool = False, sparsity: bool = False, peers: bool = False,
                  peer_types: str | None = None) -> dict:
    import json
    from dataclasses import replace

    from rich.console import Console

    from sizewise.io.bundled import resolve_path
    from sizewise.study import (QUICK_SETTINGS, StudySettings, default_out_dir, markdown, parse_recipes, run_study,
                                write_outputs)

    names = parse_recipes(recipes, quick)  # bad names fail before anything slow happens
    from sizewise.study_peers import parse_types
    ptypes = parse_types(peer_types) if peers else None
    if peer_types and not peers:
        raise SizewiseError("--peer-types needs --peers")
    if not resolve_path(model).exists():
        raise SizewiseError(f"model not found: {model} (give a .gguf file, an HF directory, or 'bundled')")
    for f in text or []:
        if not Path(f).is_file():
            raise SizewiseError(f"text file not found: {f} (pass an existing UTF-8 text file to --text)")
    out_dir = Path(out) if out else default_out_dir(model)
    if out_dir.exists() and not out_dir.is_dir():
        raise SizewiseError(f"{out_dir} exists and is not a directory: choose another --out")
    settings = QUICK_SETTINGS if quick else StudySettings()
    if tokens is not None:
        if tokens < 2:
            raise SizewiseError(f"--tokens must be at least 2, got {tokens}")
        settings = replace(settings, eval_tokens=tokens)
    keep_dir = out_dir / "variants" if keep else None
    study = run_study(model, names, quick=quick, settings=settings, text_files=text, keep_dir=keep_dir,
                      progress=not json_out, peer_types=ptypes)
    paths = write_outputs(study, out_dir)
    if json_out:
        print(json.dumps(study, indent=2))
    else:
        from rich.markdown import Markdown
        Console().print(Markdown(markdown(study)))
        Console().print("wrote " + ", ".join(str(p) for p in paths))
        page = next((p for p in paths if p.name == "report.html"), None)
        if page is not None:  # the last line a `make demo` user sees: where to look
            Console().print(f"report: {page.resolve()}", soft_wrap=True)
    if sparsity:  # the pruning grid (magnitude / Wanda / SparseGPT, one-shot vs progressive) beside it
        from sizewise.study_sparsity import StudyConfig, run_study as run_sparsity
        cfg = StudyConfig.quick(model) if quick else StudyConfig(model=model)
        study["sparsity"] = run_sparsity(out_dir, cfg, console=None if not json_out else Console(stderr=True))
    return study
