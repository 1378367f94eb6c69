"""MODEL argument -> (config dict, display name): preset, config.json, HF directory, .gguf or 'bundled'."""
from __future__ import annotations

import json
from pathlib import Path

from sizewise.arch.families import inventory_from_config
from sizewise.arch.inventory import ParamInventory
from sizewise.errors import SizewiseError


def read_config_json(path: Path) -> dict:
    """Parse a config.json; any unreadable or non-object file is a user error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SizewiseError(f"cannot read {path}: {e.strerror or e}; check the path") from None
    except UnicodeDecodeError:
        raise SizewiseError(f"{path} is not a JSON text file: pass a model's config.json "
                            "(for a checkpoint's tensors use `sizewise inspect`)") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise SizewiseError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                            "fix the file or pass another config") from None
    if not isinstance(cfg, dict):
        raise SizewiseError(f"{path} holds a JSON {type(cfg).__name__}, not an object: pass a model's config.json")
    if "weight_map" in cfg and "model_type" not in cfg:
        raise SizewiseError(f"{path} is a safetensors index, not a config: pass the model directory "
                            "(with its config.json) or use `sizewise inspect` on it")
    return cfg


def load_config(model: str) -> tuple[dict, str]:
    """(config dict, display name) for a preset name/repo id, config.json, model dir, .gguf or 'bundled'."""
    if not model or not model.strip():
        raise SizewiseError("no model given: pass a preset name (see `sizewise presets`), a config.json, "
                            "a model directory, a .gguf file or 'bundled'")
    path = Path(model).expanduser()
    if model == "bundled" or (path.suffix.lower() == ".gguf"):
        from sizewise.io.bundled import resolve_path
        from sizewise.io.gguf_meta import gguf_to_config  # written alongside; imported only when needed
        gguf = Path(resolve_path(model))
        if not gguf.is_file():
            raise SizewiseError(f"GGUF file not found: {gguf}; check the path")
        return gguf_to_config(gguf), ("bundled (SmolLM2-135M-Instruct Q4_1)" if model == "bundled" else gguf.name)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise SizewiseError(f"{path} has no config.json: pass a Hugging Face model directory, "
                                "or use `sizewise inspect` to count from tensor headers")
        return read_config_json(cfg_path), path.resolve().name
    if path.is_file() and path.suffix.lower() == ".safetensors":
        beside = path.parent / "config.json"
        if not beside.is_file():
            raise SizewiseError(f"{path} has no config.json beside it: estimates need the config; "
                                "`sizewise inspect` counts the file's tensors from its header")
        return read_config_json(beside), path.parent.resolve().name
    if path.is_file():
        return read_config_json(path), (path.parent.resolve().name if path.name == "config.json" else path.stem)
    if path.suffix.lower() == ".json" or "/" in model and not _looks_like_repo_id(model):
        raise SizewiseError(f"file not found: {model}; check the path, or pass a preset name (see `sizewise presets`)")
    from sizewise.arch.presets import find_preset
    p = find_preset(model)
    return p.config(), p.repo_id


def _looks_like_repo_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~"))


def inventory_for(model: str) -> ParamInventory:
    """The parameter inventory of any MODEL argument."""
    cfg, name = load_config(model)
    return inventory_from_config(cfg, name)
