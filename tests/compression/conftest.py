"""Fixtures for tests/compression live in comp_helpers.py, imported by name there: `from conftest import`
resolves to whichever conftest pytest loaded last when several test folders are named at once."""
from comp_helpers import *  # noqa: F401,F403
