"""sizewise: exact sizes, measured compression.

`sizewise.compress(model, config)`, `sizewise.save(model, tok, dir)` and `sizewise.load(dir)` are the Python API; the CLI is `sizewise`.
"""
__version__ = "0.1.0"


def compress(model, config="int8-wo", calib_tokens=None):
    """Compress `model` in place with a recipe name, recipe file or config dataclass; returns it."""
    from sizewise.api import compress as _compress
    return _compress(model, config, calib_tokens=calib_tokens)


def save(model, tokenizer, out_dir, parent=None, force=False, metrics=None):
    """Write a compressed model as a self-contained sizewise directory (atomic); returns the manifest."""
    from sizewise.api import save as _save
    return _save(model, tokenizer, out_dir, parent=parent, force=force, metrics=metrics)


def load(path):
    """Rebuild a sizewise-compressed directory on the same kernels: (model, tokenizer, manifest)."""
    from sizewise.api import load as _load
    return _load(path)
