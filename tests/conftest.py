"""Shared fixtures. Tiny models are built in the test with fixed seeds; the bundled model is shared per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled_path():
    from sizewise.io.bundled import bundled_gguf_path
    return bundled_gguf_path()
