"""The CPU this process runs on, as far as numbers depend on it (/proc/cpuinfo, read once).

fp32 results are bitwise reproducible on one type of CPU, not across types: the BLAS and torch's own
vectorised loops pick their kernels by vendor and instruction set, and training amplifies last-bit
differences (a top-k routing choice flips, a seed then learns differently). So every run records
`numerics_class()`, and the regression gate keeps its recorded numbers per class.
"""

import functools
import platform
from pathlib import Path


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields (vendor_id, model name, flags); empty where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    return frozenset(cpuinfo().get("flags", "").split())


def cpu_name() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def numerics_class() -> str:
    """The vendor and the vector instruction set torch dispatches to, e.g. "AuthenticAMD AVX512"
    (`ATEN_CPU_CAPABILITY=avx2` makes it "... AVX2", as a CPU without AVX512 would be)."""
    import torch  # base/ stays importable without torch; every caller has loaded it already

    vendor = cpuinfo().get("vendor_id") or platform.machine() or "unknown"
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()}"
