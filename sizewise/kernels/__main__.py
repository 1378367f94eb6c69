"""`python -m sizewise.kernels`: build (or load) the CPU kernels now and say which (make install runs it)."""
from sizewise.kernels import build_key, cache_root, load_seconds, ops, why_not

m = ops()
secs, cached = load_seconds() or (0.0, False)
if m is None:
    print(f"sizewise kernels: not in use ({why_not()}); the PyTorch paths will run")
else:
    print(f"sizewise kernels: {'loaded from the cache' if cached else 'built'} in {secs:.1f} s "
          f"({cache_root() / 'kernels' / build_key()})")

