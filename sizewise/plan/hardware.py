"""The hardware catalog: what one accelerator holds, reads and computes, each figure from its datasheet.

A plan is only as good as these numbers, so every entry names its source. FLOPS are the DENSE
figures: NVIDIA's datasheets print the 2:4-sparse number with an asterisk ("* With sparsity"),
which is twice the dense one; we store the dense value. Units: bytes, bytes/s, TFLOPS (10^12).
Memory is as the vendor states it in decimal GB (80 GB = 80e9 bytes); the usable part is what
the driver reports and is a little less, which `gpu_memory_utilization` in parallel.py covers.
The `cpu` entry is this machine, read from /proc; its bandwidth and FLOPS are rough figures.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from sizewise.errors import SizewiseError

GB = 10**9
TB = 10**12


@dataclass(frozen=True)
class Accelerator:
    """One device. Bandwidths in bytes/s; interconnect is per device, the vendor's bidirectional figure."""

    name: str
    vendor: str
    memory_bytes: int
    memory_type: str
    hbm_bandwidth: float  # bytes/s, device memory
    bf16_tflops: float  # dense tensor-core BF16
    fp8_tflops: float | None  # dense FP8; None where the hardware has no FP8 tensor cores
    interconnect: str  # intra-node GPU link, e.g. "NVLink 4 (900 GB/s)"
    interconnect_bandwidth: float  # bytes/s per device, bidirectional as the vendor quotes it
    pcie: str
    pcie_bandwidth: float  # bytes/s, x16 link, bidirectional
    source: str  # datasheet title + URL
    aliases: tuple[str, ...] = ()
    rough: bool = False  # True: bandwidth and FLOPS are rough estimates, not datasheet figures
    notes: str = ""

    @property
    def has_fast_link(self) -> bool:
        """NVLink / Infinity Fabric between devices (else TP all-reduces go over PCIe)."""
        return self.interconnect_bandwidth > self.pcie_bandwidth

    @property
    def link_bandwidth(self) -> float:
        """Unidirectional bytes/s a ring all-reduce sees per device: half the bidirectional figure."""
        return max(self.interconnect_bandwidth, self.pcie_bandwidth) / 2

    def tflops(self, fmt: str) -> float:
        """Dense TFLOPS for the matmul precision a weight format runs at (fp8 where supported)."""
        if fmt.lower().startswith("fp8") and self.fp8_tflops:
            return self.fp8_tflops
        return self.bf16_tflops

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d


_PCIE4 = ("PCIe Gen4 x16 (64 GB/s)", 64 * GB)
_PCIE5 = ("PCIe Gen5 x16 (128 GB/s)", 128 * GB)

CATALOG: tuple[Accelerator, ...] = (
    # NVIDIA H100 Tensor Core GPU Datasheet (H100 SXM column), https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
    # and https://www.nvidia.com/en-us/data-center/h100/ : 80 GB, 3.35 TB/s, BF16 1,979* / FP8 3,958* TFLOPS
    # (*with sparsity -> dense 989.5 / 1,979), NVLink 900 GB/s, PCIe Gen5 128 GB/s.
    Accelerator("H100 SXM", "NVIDIA", 80 * GB, "HBM3", 3.35 * TB, 989.5, 1979.0,
                "NVLink 4 (900 GB/s)", 900 * GB, *_PCIE5,
                "NVIDIA H100 Tensor Core GPU Datasheet, https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
                aliases=("h100", "h100-sxm", "h100sxm", "h100-80gb", "h100 sxm5")),
    # Same datasheet, H100 PCIe column: 80 GB HBM2e, 2.0 TB/s, BF16 1,513* / FP8 3,026* (dense 756.5 / 1,513),
    # NVLink bridge 600 GB/s (pairs only), PCIe Gen5 128 GB/s. (Later revisions list the 94 GB H100 NVL instead.)
    Accelerator("H100 PCIe", "NVIDIA", 80 * GB, "HBM2e", 2.0 * TB, 756.5, 1513.0,
                "NVLink bridge (600 GB/s, pairs)", 600 * GB, *_PCIE5,
                "NVIDIA H100 Tensor Core GPU Datasheet (H100 PCIe), https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
                aliases=("h100-pcie", "h100pcie"),
                notes="NVLink bridge joins pairs only; TP beyond 2 runs over PCIe."),
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM), https://www.nvidia.com/en-us/data-center/h200/ :
    # 141 GB HBM3e, 4.8 TB/s, BF16 1,979* / FP8 3,958* TFLOPS (dense 989.5 / 1,979), NVLink 900 GB/s, PCIe Gen5.
    Accelerator("H200", "NVIDIA", 141 * GB, "HBM3e", 4.8 * TB, 989.5, 1979.0,
                "NVLink 4 (900 GB/s)", 900 * GB, *_PCIE5,
                "NVIDIA H200 Tensor Core GPU Datasheet, https://www.nvidia.com/en-us/data-center/h200/",
                aliases=("h200-sxm", "h200sxm", "h200 sxm")),
    # NVIDIA HGX B200 (HGX platform datasheet, per-GPU = 8-GPU totals / 8), https://www.nvidia.com/en-us/data-center/hgx/
    # and NVIDIA Blackwell Architecture Technical Brief, https://resources.nvidia.com/en-us-blackwell-architecture :
    # 180 GB HBM3e (1,440 GB per 8), 8 TB/s, FP16/BF16 4.5 PF* / FP8 9 PF* per GPU (*sparse -> dense 2,250 / 4,500),
    # NVLink 5 1.8 TB/s. Host link of the HGX board: PCIe Gen5 x16 to the CPU.
    Accelerator("B200", "NVIDIA", 180 * GB, "HBM3e", 8.0 * TB, 2250.0, 4500.0,
                "NVLink 5 (1,800 GB/s)", 1800 * GB, *_PCIE5,
                "NVIDIA HGX B200 datasheet, https://www.nvidia.com/en-us/data-center/hgx/ ; Blackwell Architecture Technical Brief, https://resources.nvidia.com/en-us-blackwell-architecture",
                aliases=("b200-sxm", "hgx-b200")),
    # NVIDIA A100 Tensor Core GPU Datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf :
    # A100 40GB SXM: 40 GB HBM2, 1,555 GB/s, BF16 312 (624*) TFLOPS, no FP8, NVLink 600 GB/s, PCIe Gen4 64 GB/s.
    Accelerator("A100 40GB", "NVIDIA", 40 * GB, "HBM2", 1555 * GB, 312.0, None,
                "NVLink 3 (600 GB/s)", 600 * GB, *_PCIE4,
                "NVIDIA A100 Tensor Core GPU Datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
                aliases=("a100-40gb", "a100-40", "a100 40"),
                notes="No FP8 tensor cores: fp8 weights run as W8A16 (weight-only)."),
    # Same datasheet, A100 80GB SXM: 80 GB HBM2e, 2,039 GB/s, BF16 312 TFLOPS dense, NVLink 600 GB/s.
    Accelerator("A100 80GB", "NVIDIA", 80 * GB, "HBM2e", 2039 * GB, 312.0, None,
                "NVLink 3 (600 GB/s)", 600 * GB, *_PCIE4,
                "NVIDIA A100 Tensor Core GPU Datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
                aliases=("a100", "a100-80gb", "a100-80", "a100 80"),
                notes="No FP8 tensor cores: fp8 weights run as W8A16 (weight-only)."),
    # NVIDIA L40S GPU datasheet, https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413 :
    # 48 GB GDDR6, 864 GB/s, BF16 362.05 | 733* TFLOPS, FP8 733 | 1,466* TFLOPS, no NVLink, PCIe Gen4 x16.
    Accelerator("L40S", "NVIDIA", 48 * GB, "GDDR6", 864 * GB, 362.05, 733.0,
                "none (PCIe only)", 0, *_PCIE4,
                "NVIDIA L40S GPU Datasheet, https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413",
                aliases=("l40s-48gb",)),
    # NVIDIA Ada GPU Architecture whitepaper, Appendix A (GeForce RTX 4090),
    # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf :
    # 24 GB GDDR6X, 1,008 GB/s, peak BF16 tensor TFLOPS with FP32 accumulate 165.2 (330.4 sparse),
    # peak FP8 with FP32 accumulate 330.3 (660.6 sparse). No NVLink; PCIe Gen4 x16.
    Accelerator("RTX 4090", "NVIDIA", 24 * GB, "GDDR6X", 1008 * GB, 165.2, 330.3,
                "none (PCIe only)", 0, *_PCIE4,
                "NVIDIA Ada GPU Architecture whitepaper (Appendix A, RTX 4090), https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
                aliases=("4090", "rtx4090", "rtx-4090", "geforce rtx 4090"),
                notes="FP32-accumulate figures (what inference kernels use); FP16-accumulate is 2x."),
    # NVIDIA L4 Tensor Core GPU datasheet, https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet :
    # 24 GB GDDR6, 300 GB/s, BF16 242* / FP8 485* TFLOPS (*sparse -> dense 121 / 242.5), PCIe Gen4 x16.
    Accelerator("L4", "NVIDIA", 24 * GB, "GDDR6", 300 * GB, 121.0, 242.5,
                "none (PCIe only)", 0, *_PCIE4,
                "NVIDIA L4 Tensor Core GPU Datasheet, https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet",
                aliases=("l4-24gb",)),
    # AMD Instinct MI300X Accelerator data sheet, https://www.amd.com/content/dam/amd/en/documents/instinct-tech-docs/data-sheets/amd-instinct-mi300x-data-sheet.pdf :
    # 192 GB HBM3, 5.3 TB/s, peak BF16 1,307.4 TFLOPS (2,614.9 with sparsity), FP8 2,614.9 (5,229.8 sparse),
    # Infinity Fabric 896 GB/s peak aggregate (7 links x 128 GB/s), PCIe Gen5 x16 128 GB/s.
    Accelerator("MI300X", "AMD", 192 * GB, "HBM3", 5.3 * TB, 1307.4, 2614.9,
                "Infinity Fabric (896 GB/s)", 896 * GB, *_PCIE5,
                "AMD Instinct MI300X Accelerator data sheet, https://www.amd.com/content/dam/amd/en/documents/instinct-tech-docs/data-sheets/amd-instinct-mi300x-data-sheet.pdf",
                aliases=("mi300", "mi-300x", "instinct mi300x")),
    # AMD Instinct MI325X Accelerator data sheet, https://www.amd.com/content/dam/amd/en/documents/instinct-tech-docs/product-briefs/instinct-mi325x-datasheet.pdf
    # (product page https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html): 256 GB HBM3E, 6 TB/s,
    # BF16 1,307.4 / FP8 2,614.9 TFLOPS dense, Infinity Fabric 896 GB/s, PCIe Gen5 x16.
    Accelerator("MI325X", "AMD", 256 * GB, "HBM3E", 6.0 * TB, 1307.4, 2614.9,
                "Infinity Fabric (896 GB/s)", 896 * GB, *_PCIE5,
                "AMD Instinct MI325X data sheet, https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html",
                aliases=("mi325", "mi-325x", "instinct mi325x")),
)


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


# --- this machine ---------------------------------------------------------------------------

ROUGH_CPU_BANDWIDTH_PER_CORE = 10 * GB  # bytes/s per core: a rough figure for a shared server core


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def cpu_accelerator(cpuinfo: str | None = None, meminfo: str | None = None) -> Accelerator:
    """This machine as an 'accelerator': memory = MemTotal, name = model name, cores counted in /proc/cpuinfo.

    Bandwidth (10 GB/s per core) and FLOPS (cores x MHz x FLOPs/cycle from the SIMD flags) are rough
    figures, marked as such: a roofline on them says what order of magnitude to expect, no more.
    """
    try:
        cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
        meminfo = _read("/proc/meminfo") if meminfo is None else meminfo
    except OSError as e:
        raise SizewiseError(f"cannot read /proc ({e}); the 'cpu' entry needs Linux /proc/cpuinfo and /proc/meminfo")
    model, mhz, flags, cores = "unknown CPU", 0.0, set(), 0
    for line in cpuinfo.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "processor":
            cores += 1
        elif key == "model name" and model == "unknown CPU":
            model = val
        elif key == "cpu MHz" and not mhz:
            try:
                mhz = float(val)
            except ValueError:
                pass
        elif key in ("flags", "Features") and not flags:
            flags = set(val.split())
    cores = cores or (os.cpu_count() or 1)
    mem = 0
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            mem = int(parts[1]) * (1024 if len(parts) < 3 or parts[2].lower() == "kb" else 1)
            break
    if not mem:
        raise SizewiseError("MemTotal missing from /proc/meminfo; cannot size the 'cpu' entry")
    # FLOPs per cycle per core for fp32 FMA: AVX-512 2x16x2, AVX2 2x8x2, else scalar-ish 8. AMX-BF16 ~1024.
    fp32_per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 8
    bf16_per_cycle = 1024 if "amx_bf16" in flags else 2 * fp32_per_cycle if "avx512_bf16" in flags else fp32_per_cycle
    ghz = (mhz or 2000.0) / 1000.0
    bf16 = cores * ghz * bf16_per_cycle / 1000.0  # TFLOPS
    return Accelerator(
        name="cpu", vendor=model, memory_bytes=mem, memory_type="DRAM",
        hbm_bandwidth=cores * ROUGH_CPU_BANDWIDTH_PER_CORE, bf16_tflops=bf16, fp8_tflops=None,
        interconnect="none", interconnect_bandwidth=0, pcie="n/a", pcie_bandwidth=0,
        source="this machine: /proc/cpuinfo (model name, processors, cpu MHz, flags) and /proc/meminfo (MemTotal)",
        aliases=("host", "this"), rough=True,
        notes=(f"{cores} cores at {ghz:.2f} GHz; ROUGH: bandwidth assumed {ROUGH_CPU_BANDWIDTH_PER_CORE / GB:.0f} GB/s per core, "
               f"FLOPS = cores x GHz x {bf16_per_cycle} bf16 FLOPs/cycle from the SIMD flags (peak, not sustained)."),
    )


# --- lookup ---------------------------------------------------------------------------------

def names() -> list[str]:
    return [a.name for a in CATALOG] + ["cpu"]


def get_hardware(name: str) -> Accelerator:
    """Case-insensitive lookup by name or alias ('h100' -> H100 SXM); unknown names list the catalog."""
    key = _norm(name)
    if not key:
        raise SizewiseError(f"empty hardware name; choose one of: {', '.join(names())}")
    if key in ("cpu", "host", "this"):
        return cpu_accelerator()
    for a in CATALOG:
        if key == _norm(a.name) or key in {_norm(x) for x in a.aliases}:
            return a
    raise SizewiseError(f"unknown hardware {name!r}; choose one of: {', '.join(names())} (see `sizewise hardware`)")


def catalog(include_cpu: bool = True) -> list[Accelerator]:
    out = list(CATALOG)
    if include_cpu:
        try:
            out.append(cpu_accelerator())
        except SizewiseError:
            pass
    return out


__all__ = ["Accelerator", "CATALOG", "GB", "TB", "catalog", "cpu_accelerator", "get_hardware", "names"]
