"""Shipped presets: real config.json files of known models, one file per HF repo.

A file is named `<owner>__<repo>.json`; the preset's name is the lower-cased repo name
("deepseek-v3", "llama-3.1-8b"). Where each file comes from, and the total it must give,
is in SOURCES.md beside the files.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sizewise.errors import SizewiseError

PRESET_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Preset:
    name: str  # lower-cased repo name, e.g. "deepseek-r1-distill-qwen-7b"
    repo_id: str  # e.g. "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    path: Path

    def config(self) -> dict:
        with open(self.path, encoding="utf-8") as f:
            return json.load(f)


@lru_cache(maxsize=1)
def _presets() -> tuple[Preset, ...]:
    out = []
    for p in sorted(PRESET_DIR.glob("*__*.json")):
        owner, repo = p.stem.split("__", 1)
        out.append(Preset(name=repo.lower(), repo_id=f"{owner}/{repo}", path=p))
    return tuple(out)


def list_presets() -> list[Preset]:
    """All shipped presets, sorted by file name (owner, then repo)."""
    return list(_presets())


def find_preset(name_or_repo_id: str) -> Preset:
    """Case-insensitive lookup by name or repo id; a unique prefix also works ("deepseek-llm-67b").

    Unknown names raise SizewiseError suggesting the closest names.
    """
    key = name_or_repo_id.strip().lower()
    presets = _presets()
    for p in presets:
        if key in (p.name, p.repo_id.lower()):
            return p
    prefixed = [p for p in presets if p.name.startswith(key) or p.repo_id.lower().startswith(key)]
    if len(prefixed) == 1 and key:
        return prefixed[0]
    names = [p.name for p in presets]
    close = difflib.get_close_matches(key.split("/")[-1], names, n=3, cutoff=0.5) or \
        [p.name for p in prefixed[:3]]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise SizewiseError(f"unknown preset {name_or_repo_id!r}: {hint}"
                        "run `sizewise presets` for the list, or pass a config.json, a model directory or a .gguf file")
