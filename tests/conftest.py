"""Test setup: on a machine without CUDA, Triton kernels run through its CPU interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is created; ssmgen renders and
imports its kernels lazily, so setting it here (before the first kernel) is enough.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Interpreter examples are slow (tl.associative_scan runs as a Python fold): keep them few.
settings.register_profile("interp", max_examples=int(os.environ.get("SSMGEN_EXAMPLES", "30")),
                          deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("gpu", max_examples=int(os.environ.get("SSMGEN_EXAMPLES", "150")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gpu" if HAS_CUDA else "interp")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_interp = pytest.mark.skip(reason="interpreter test: runs on machines without CUDA")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "interp" in item.keywords and HAS_CUDA:
            item.add_marker(skip_interp)


def pytest_terminal_summary(terminalreporter):
    try:
        from test_aot_compile import REPORTS
    except ImportError:
        return
    if not REPORTS:
        return
    tr = terminalreporter
    tr.section("ahead-of-time compile: registers / spills per kernel")
    tr.write_line(f"{'kernel':<80} {'sm':>3} {'regs':>5} {'spill B':>8} {'smem B':>7} {'s':>5}")
    for r in sorted(REPORTS, key=lambda r: (r.name, r.arch)):
        tr.write_line(f"{r.name:<80} {r.arch:>3} {r.registers:>5} {r.spill_bytes:>8} "
                      f"{r.shared_bytes:>7} {r.seconds:>5.1f}")
