"""GB vs GiB: both printed, both parsed."""
from __future__ import annotations

import pytest

from sizewise.errors import SizewiseError
from sizewise.units import fmt_bytes, parse_size


def test_fmt_bytes_both_units():
    assert fmt_bytes(8e9 * 4) == "32.00 GB (29.80 GiB)"
    assert fmt_bytes(2**30) == "1.07 GB (1.00 GiB)"
    assert "MB" in fmt_bytes(5_000_000) and "MiB" in fmt_bytes(5_000_000)


@pytest.mark.parametrize("text,value", [("80GiB", 80 * 2**30), ("80GB", 80 * 10**9), ("512MiB", 512 * 2**20),
                                        ("1.5 TB", 1_500_000_000_000), ("80gib", 80 * 2**30), ("1024", 1024)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "eighty GB", "80 GiBs", "-1GB", "0GB", "1e-12 B"])
def test_parse_size_rejects_junk(text):
    with pytest.raises(SizewiseError):
        parse_size(text)
