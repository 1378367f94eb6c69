"""sizewise: exact sizes, measured compression.

`sizewise.compress(model, config)` and `sizewise.load(dir)` are the Python API; the CLI is `sizewise`.
"""
__version__ = "0.1.0"


def compress(model, config="int8-wo", calib_tokens=None):
    """Compress `model` in place with a recipe name, recipe file or config dataclass; returns it."""
    from sizewise.api import compress as _compress
    return _compress(model, config, calib_tokens=calib_tokens)


def load(path):
    """Rebuild a sizewise-compressed directory on the same kernels: (model, tokenizer, manifest)."""
    from sizewise.api import load as _load
    return _load(path)
