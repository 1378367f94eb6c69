"""The catalog: required entries, dense (not sparse) figures, sources, lookup, and the cpu entry from /proc."""
from __future__ import annotations

import os

import pytest

from sizewise.errors import SizewiseError
from sizewise.plan.hardware import CATALOG, catalog, cpu_accelerator, get_hardware, names

REQUIRED = ["H100 SXM", "H100 PCIe", "H200", "B200", "A100 40GB", "A100 80GB", "L40S", "RTX 4090", "MI300X"]


def test_catalog_has_the_required_accelerators_each_with_a_datasheet():
    got = {a.name for a in CATALOG}
    assert set(REQUIRED) <= got
    assert len(CATALOG) >= 10
    for a in CATALOG:
        assert "http" in a.source, a.name
        assert a.memory_bytes >= 16e9 and a.hbm_bandwidth > 1e11 and a.bf16_tflops > 50, a.name
        assert not a.rough


def test_fp8_is_twice_bf16_where_supported_and_none_on_ampere():
    # On every listed part the dense FP8 rate is twice the dense BF16 rate; a sparse figure mixed
    # into one column (NVIDIA's asterisked numbers) would break this ratio.
    for a in CATALOG:
        if a.name.startswith("A100"):
            assert a.fp8_tflops is None
        else:
            assert a.fp8_tflops == pytest.approx(2 * a.bf16_tflops, rel=0.02), a.name  # L40S: 733 vs 362.05


def test_h100_dense_is_half_the_datasheet_sparse_figure():
    # NVIDIA H100 datasheet, SXM: BF16 1,979 TFLOPS* and FP8 3,958 TFLOPS*, "* with sparsity".
    h = get_hardware("H100 SXM")
    assert 2 * h.bf16_tflops == pytest.approx(1979, abs=1)
    assert 2 * h.fp8_tflops == pytest.approx(3958, abs=1)


def test_lookup_is_case_insensitive_with_aliases():
    assert get_hardware("h100").name == "H100 SXM"
    assert get_hardware("H100-sxm").name == "H100 SXM"
    assert get_hardware("mi300x").name == "MI300X"
    assert get_hardware("rtx4090").name == "RTX 4090"
    assert get_hardware("a100").name == "A100 80GB"


def test_unknown_hardware_lists_the_names():
    with pytest.raises(SizewiseError) as e:
        get_hardware("tpu-v9")
    msg = str(e.value)
    assert "tpu-v9" in msg and "H200" in msg and "cpu" in msg
    assert "cpu" in names()


def test_cpu_entry_reads_proc():
    meminfo = open("/proc/meminfo").read()
    kb = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1])
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 None)
    cpu = get_hardware("CPU")
    assert cpu.name == "cpu" and cpu.rough
    assert cpu.memory_bytes == kb * 1024
    if model:
        assert cpu.vendor == model
    assert f"{sum(1 for line in open('/proc/cpuinfo') if line.startswith('processor'))} cores" in cpu.notes
    assert "ROUGH" in cpu.notes
    assert any(a.name == "cpu" for a in catalog())


def test_cpu_entry_from_given_text():
    cpuinfo = ("processor\t: 0\nmodel name\t: Test CPU 9000\ncpu MHz\t\t: 3000.000\nflags\t\t: fma avx2\n\n"
               "processor\t: 1\nmodel name\t: Test CPU 9000\ncpu MHz\t\t: 3000.000\nflags\t\t: fma avx2\n")
    cpu = cpu_accelerator(cpuinfo, "MemTotal:       2048 kB\nMemFree: 1 kB\n")
    assert cpu.vendor == "Test CPU 9000"
    assert cpu.memory_bytes == 2048 * 1024
    # 2 cores x 3 GHz x 32 fp32 FLOPs/cycle (AVX2 FMA) = 192 GFLOPS
    assert cpu.bf16_tflops == pytest.approx(2 * 3.0 * 32 / 1000)
    with pytest.raises(SizewiseError):
        cpu_accelerator(cpuinfo, "MemFree: 1 kB\n")
    assert os.path.exists("/proc/cpuinfo")
