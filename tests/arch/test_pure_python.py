"""The estimate path must not import torch or transformers: it answers for a 671B model instantly."""
from __future__ import annotations

import subprocess
import sys


def test_inventory_path_imports_no_torch():
    code = ("import sys; from sizewise.arch.resolve import inventory_for; "
            "inv = inventory_for('deepseek-v3'); "
            "assert inv.total > 6e11; "
            "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
