"""What a tuning record says about the GPU it was measured on."""
from __future__ import annotations

import ctypes
import functools


def _driver_version() -> str:
    try:
        v = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v))
        return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except OSError:
        return "unknown"


@functools.lru_cache(maxsize=None)
def info(index: int = 0) -> dict:
    """name, compute capability, SM count, memory, driver and CUDA runtime of a CUDA device."""
    import torch

    p = torch.cuda.get_device_properties(index)
    return {"name": p.name, "cc": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
            "memory_gb": round(p.total_memory / 2**30, 1), "driver": _driver_version(),
            "cuda": torch.version.cuda or "unknown"}


def versions() -> dict:
    import torch
    import triton

    from . import __version__

    return {"torch": torch.__version__, "triton": triton.__version__, "ssmgen": __version__}
