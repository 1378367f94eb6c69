"""docs/claims.md must be what scripts/gen_claims.py generates from the current estimator."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_claims", ROOT / "scripts" / "gen_claims.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_claims"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_claims_doc_up_to_date():
    gen = load_generator()
    text = gen.render()
    assert (ROOT / "docs" / "claims.md").read_text(encoding="utf-8") == text, \
        "docs/claims.md is stale: run .venv/bin/python scripts/gen_claims.py"


def test_claims_carry_computed_figures():
    text = load_generator().render()
    # 8,030,261,248 x 4 bytes, in both units, computed here by hand
    assert f"{8_030_261_248 * 4 / 1e9:.2f} GB ({8_030_261_248 * 4 / 2**30:.2f} GiB)" in text
    # DeepSeek-LLM-67B in fp32
    assert f"{67_425_001_472 * 4 / 1e9:,.2f} GB" in text
    # mixed-precision Adam floor: 16 bytes/param
    assert f"{67_425_001_472 * 16 / 1e12:,.3f} TB" in text
    assert text.count("## ") == 5
